#!/bin/bash
# The neck and fusion ablation of issue 17, seed by seed so that a stopped study has every
# row early: every finished training is recorded under OUT/train/<row>/seed-<k>/ and the same
# command resumes it. Run on a CPU with nothing else running; the last call also times the
# necks (latency needs the CPU to itself). About 5 minutes per training on 2 cores, 12 rows.
#
#   bash benchmarks/paper_studies.sh [OUT]      (default runs/ablation-800)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ablation-800}
EFFDET=${EFFDET:-.venv/bin/efficientdet}
COMMON=(--fusions fast softmax sum channel_fast --train-steps 800 --train-batch 8
        --train-set optim.lr=0.015 --demo-train 800 --demo-val 200 --out "$OUT")
mkdir -p "$OUT"
"$EFFDET" ablate "${COMMON[@]}" --seeds 1 --no-latency 2>&1 | tee -a "$OUT/seed1.log"
"$EFFDET" ablate "${COMMON[@]}" --seeds 2 --no-latency 2>&1 | tee -a "$OUT/seed2.log"
"$EFFDET" ablate "${COMMON[@]}" --seeds 3 2>&1 | tee -a "$OUT/seed3.log"
