#!/usr/bin/env bash
# The GPU check: the CUDA tests (tests/test_gpu.py) and the GPU benchmark (bench_gpu.py) on one
# CUDA GPU, within GPU_CHECK_SECONDS (default 360 s) in all. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh [WHEELS_DIR]            # WHEELS_DIR defaults to .whl/ if present
#   PYTHON=/usr/bin/python3.12 bash benchmarks/gpu_check.sh .whl
#
# 1. Wheels: every WHEELS_DIR/*.whl whose distribution the interpreter lacks is installed with
#    `pip install --no-index --no-deps --target build/gpu-check-site` (no network), and that
#    folder goes first on PYTHONPATH (so an onnxruntime-gpu wheel there shadows the CPU build).
#    This repository is used from src/ on PYTHONPATH (nothing installed). The wheels come from
#    benchmarks/gpu_wheels.sh, run on a machine with pip access:
#        bash benchmarks/gpu_wheels.sh .whl     # effdet, omegaconf, pycocotools, onnxscript, onnx-ir
# 2. nvidia-smi, and the versions of torch, timm, effdet and this package.
# 3. pytest -m gpu tests/test_gpu.py (timeout GPU_CHECK_TEST_SECONDS, default 150 s).
# 4. bench_gpu.py --out benchmarks/results/gpu with the time left (less 10 s) as its timeout
#    and budget (--quick under 90 s).
# Logs and results go to benchmarks/results/gpu/ and, when $OUT is set, are copied there.
#
# Exit status: 0 tests passed and the benchmark ran (or both skipped: no CUDA GPU); 1 a test
# failed, the set-up failed or the benchmark raised; 2 the benchmark was cut by its timeout
# (its partial results are written). A missed benchmark goal is reported, not an exit status.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TOTAL=${GPU_CHECK_SECONDS:-360}
TEST_SECONDS=${GPU_CHECK_TEST_SECONDS:-150}
RESULTS=benchmarks/results/gpu
SITE=build/gpu-check-site

if [[ ! -f benchmarks/bench_gpu.py || ! -d src/efficientdet ]]; then
    echo "gpu_check.sh: run it from the repository root" >&2
    exit 1
fi
mkdir -p "$RESULTS"
logs=("$RESULTS/gpu_check.log")
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    logs+=("$OUT/gpu_check.log")
fi
exec > >(tee "${logs[@]}") 2>&1
tee_pid=$!

# shellcheck disable=SC2317  # called by the EXIT trap
finish() {
    if [[ -n "${OUT:-}" ]]; then
        for f in "$RESULTS"/gpu_check.md "$RESULTS"/gpu_check.csv "$RESULTS"/gpu_check.json \
                 "$RESULTS"/tests.xml; do
            if [[ -f "$f" ]]; then cp "$f" "$OUT"/; fi
        done
    fi
    exec >&- 2>&-  # let tee see the end and write the last lines
    wait "$tee_pid" 2>/dev/null || true
}
trap finish EXIT

echo "== gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${TOTAL} s, python: $PYTHON"

# ---- 1. wheels -------------------------------------------------------------------------------
WHEELS=${1:-}
if [[ -z "$WHEELS" && -d .whl ]]; then
    WHEELS=.whl
fi
if [[ -n "$WHEELS" ]]; then
    if [[ ! -d "$WHEELS" ]]; then
        echo "gpu_check.sh: $WHEELS is not a folder of wheels" >&2
        exit 1
    fi
    missing=()
    for whl in "$WHEELS"/*.whl; do
        [[ -e "$whl" ]] || continue
        dist=$(basename "$whl")
        dist=${dist%%-*}
        if "$PYTHON" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null; then
            echo "have $dist"
        else
            missing+=("$whl")
        fi
    done
    if ((${#missing[@]})); then
        echo "installing into $SITE: ${missing[*]##*/}"
        PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
            --upgrade --target "$SITE" "${missing[@]}"
    fi
fi
export PYTHONPATH="$PWD/$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg

# ---- 2. the machine --------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi || echo "nvidia-smi failed (status $?)"
else
    echo "no nvidia-smi on this machine"
fi
if ! "$PYTHON" - <<'PY'
import importlib.metadata as m

import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
for name in ("torchvision", "timm", "effdet", "pycocotools", "onnxruntime", "onnxruntime-gpu", "onnxscript"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name}: not installed")
import effdet  # noqa: F401  the reference must import
import efficientdet

print(f"  efficientdet {efficientdet.__version__} from {efficientdet.__file__}")
PY
then
    echo "gpu_check.sh: the environment is incomplete (see above); bring the wheels: benchmarks/gpu_wheels.sh" >&2
    exit 1
fi
CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')

# ---- 3. tests --------------------------------------------------------------------------------
echo "== tests (timeout ${TEST_SECONDS} s)"
test_rc=0
timeout -k 10 "$TEST_SECONDS" "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
    -rs --junitxml="$RESULTS/tests.xml" || test_rc=$?
if ((test_rc == 124 || test_rc == 137)); then
    echo "tests: cut by the ${TEST_SECONDS} s timeout"
fi

# ---- 4. benchmark ----------------------------------------------------------------------------
bench_rc=0
left=$((TOTAL - SECONDS - 10))
if [[ "$CUDA" != 1 ]]; then
    "$PYTHON" benchmarks/bench_gpu.py --out "$RESULTS" || bench_rc=$?
    echo "benchmark: skipped (no CUDA GPU)"
elif ((left < 45)); then
    echo "benchmark: skipped, only ${left} s left of ${TOTAL} s"
    bench_rc=124
else
    quick=()
    if ((left < 90)); then quick=(--quick); fi
    echo "== benchmark (timeout ${left} s ${quick[*]})"
    timeout -k 10 "$left" "$PYTHON" benchmarks/bench_gpu.py --out "$RESULTS" \
        --budget-s "$((left - 5))" "${quick[@]}" || bench_rc=$?
fi

echo "== done in ${SECONDS} s: tests status ${test_rc}, benchmark status ${bench_rc}"
if ((test_rc != 0)); then
    exit 1
fi
if ((bench_rc == 124 || bench_rc == 137)); then
    echo "benchmark cut by its timeout: partial results in $RESULTS"
    exit 2
fi
if ((bench_rc != 0)); then
    exit 1
fi
exit 0
