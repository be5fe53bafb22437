"""Fitting a run's schedule into a wall-clock budget (``run.time_budget_minutes``).

The trainer tells :class:`TimeBudget` when each step starts and ends and how long it spent in
evaluations and checkpoints; the budget times the steps alone, adds each step's share of the
last evaluation, and answers how many steps fit. It measures first after a few probe steps,
then again every few steps (early steps are often slower than later ones) until half of the
run is done, and then keeps the schedule fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PROBE_STEPS = 6  # steps timed before the first fit
REFIT_EVERY = 10  # steps between later fits


@dataclass
class TimeBudget:
    """The time-budget state of one run.

    Attributes:
        minutes: the budget; None when the schedule is fixed by epochs or ``max_steps``.
        fixed: the schedule no longer changes (no budget, or half of the run done).
        cap: the configured step count, which a fit never exceeds (set at the first fit).
        mark: ``(time, step, overhead seconds)`` where the current timing window starts.
    """

    minutes: float | None
    fixed: bool = False
    cap: int | None = None
    mark: tuple[float, int, float] | None = None

    def __post_init__(self) -> None:
        if self.minutes is None:
            self.fixed = True

    def step_started(self, now: float, step: int, first_step: int, overhead: float) -> None:
        """Start timing after the run's first step, which is warm-up."""
        if not self.fixed and step == first_step + 1:
            self.mark = (now, step, overhead)

    def refit(
        self,
        *,
        now: float,
        step: int,
        first_step: int,
        total_steps: int,
        elapsed: float,
        overhead: float,
        eval_seconds: float,
        steps_per_eval: int,
        agree: Callable[[int], int] = int,
    ) -> tuple[int, float] | None:
        """The new total step count and the seconds per step it assumes, when this step is a
        fitting point; None otherwise.

        Args:
            now: the clock now; ``elapsed``: seconds of the run so far, earlier fits included.
            step: steps done; ``first_step``: the step this process started at (resume).
            total_steps: the schedule's current length.
            overhead: seconds spent in evaluations and checkpoints since the run started.
            eval_seconds: the last evaluation's duration; ``steps_per_eval``: steps between
                two evaluations (0: none until the end).
            agree: makes processes agree on the count (data-parallel: rank 0's, broadcast).
        """
        if self.fixed or self.mark is None or self.minutes is None:
            return None
        done = step - 1 - first_step
        if done < PROBE_STEPS or (done - PROBE_STEPS) % REFIT_EVERY:
            return None
        if self.cap is None:
            self.cap = total_steps
        mark_time, mark_step, mark_overhead = self.mark
        per_step = (now - mark_time - (overhead - mark_overhead)) / max(1, step - mark_step)
        if done >= REFIT_EVERY:  # from now on, time the most recent steps only
            self.mark = (now, step, overhead)
        remaining = self.minutes * 60.0 - elapsed
        if steps_per_eval > 0 and eval_seconds > 0:
            per_step += eval_seconds / steps_per_eval  # the evaluations' share of each step
        fit = agree(step + max(0, int(remaining / per_step)))
        total = max(step, min(self.cap, fit))
        if step >= total // 2:
            self.fixed = True
        return total, per_step
