#!/bin/bash
# The two accuracy studies of the README's "The paper's claims, measured": the neck and fusion
# ablation (12 rows) and compound scaling against width, depth and resolution at matched
# multiply-adds, each trained 3 times with the same short recipe.
#
#   bash benchmarks/paper_studies.sh [OUT]        (default runs/paper-studies)
#
# Each study is one `efficientdet ...` command (STUDY_ABLATE, STUDY_SCALING below). Every
# training is recorded under OUT/<study>/, and the same command reuses the records, so a
# stopped run resumes. On a 2-core CPU the trainings go faster as two single-threaded
# processes than as one with two threads (two 100-step trainings: 159 s side by side against
# 2 x 100 s one after the other), so the script first trains in two lanes, rows split between
# them, and then runs each study's full command once on the idle CPU: that call only reads
# the records back, times the networks and writes the tables, CSVs and charts.
# About 3 h on 2 cores (the depth-only scaling row alone is about 25 CPU-minutes a seed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/paper-studies}
EFFDET=${EFFDET:-.venv/bin/efficientdet}
mkdir -p "$OUT"

# Neck and fusion ablation: every neck in the Lite0 detector (frozen cached ImageNet backbone),
# 400 AdamW steps of 8 images on 400 demo images, AP on 200 more; seeds 0, 1, 2.
ABLATE=(ablate --fusions fast softmax sum channel_fast --train-steps 400 --train-batch 8
        --train-set optim.lr=0.015 --demo-train 400 --demo-val 200 --seeds 3
        --out "$OUT/ablation")
# Compound scaling from Lite0 at half resolution (160 px; phi=1 is Lite1 at 224 px, with its
# ImageNet weights), on the ablation's data, with the same training.
SCALING=(scaling-study --base tf_efficientdet_lite0 --backbone-ladder tf_efficientnet_lite
         --phis 1 --image-scale 0.5 --pretrained-backbone --train-steps 400
         --train-batch-size 8 --train-set optim.lr=0.015
         --data "$OUT/ablation/demo_data/data.yaml" --out "$OUT/scaling")

lane() {  # single-threaded training, no timing; log to OUT/<name>.log
    local name=$1; shift
    OMP_NUM_THREADS=1 "$EFFDET" "$@" >> "$OUT/$name.log" 2>&1
}

# The demo data first (both lanes and the scaling study read it).
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import sys; from efficientdet.studies.short_train import demo_data
demo_data(sys.argv[1], num_train=400, num_val=200)" "$OUT/ablation/demo_data"
(
    lane laneA "${ABLATE[@]}" --necks fpn pafpn nasfpn fcfpn bfp mlfpn --no-latency
    lane scaling "${SCALING[@]}" --repeats 0 --seeds 2 --dimensions width resolution
) &
(
    lane laneB "${ABLATE[@]}" --necks bifpn asff efm --no-latency
    lane scaling-depth "${SCALING[@]}" --repeats 0 --seeds 3 --dimensions depth
    lane scaling "${SCALING[@]}" --repeats 0 --seed 2 --seeds 1 --dimensions width resolution
) &
wait
# The full commands: every training is recorded, so these read the records, time the
# networks on the idle CPU and write the outputs.
"$EFFDET" "${ABLATE[@]}" 2>&1 | tee "$OUT/ablation.log"
"$EFFDET" "${SCALING[@]}" --seeds 3 2>&1 | tee "$OUT/scaling.log"
