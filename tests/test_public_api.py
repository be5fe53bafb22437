"""The public API is what the README shows: every ``efficientdet.NAME`` it uses exists and is
in ``efficientdet.__all__``, and every name in ``__all__`` resolves."""

from __future__ import annotations

import re
from pathlib import Path

import efficientdet

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_name_the_readme_uses_is_public() -> None:
    used = set(re.findall(r"\befficientdet\.([A-Za-z_]\w*)\b(?!\.py)", README.read_text()))
    subpackages = {"modeling", "detection", "data", "inference", "train", "deploy", "studies", "cli", "config"}
    names = used - subpackages
    assert names, "the README shows no efficientdet.NAME at all"
    missing = sorted(n for n in names if n not in efficientdet.__all__)
    assert missing == [], f"README uses efficientdet.{missing} that __all__ does not name"


def test_every_public_name_resolves() -> None:
    for name in efficientdet.__all__:
        assert getattr(efficientdet, name) is not None, name
    assert "compound_config" in dir(efficientdet)
