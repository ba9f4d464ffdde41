#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a GPU machine (from the project's root, its environment
# active, torch with CUDA installed):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the GPU-marked tests (tests/test_gpu.py, tests/test_imagenet.py), which skip without CUDA elsewhere;
# 2. benchmarks/imagenet.py on cuda (occlusion against Captum, PGD against a bare loop and torchattacks);
# 3. a small `roiroa run` of examples/imagenet_mobilenet.toml on cuda, where the shared ImageNet sample exists.
# Everything it prints is also written to OUT_DIR (default gpu-check/), with nvidia-smi's view of the device.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-src}
shared=${ROIROA_SHARED:-../shared}/data/imagenet
status=0
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: PyTorch sees no CUDA GPU; nothing to check" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

echo "== GPU-marked tests"
python -m pytest -q -m gpu tests/test_gpu.py tests/test_imagenet.py 2>&1 | tee "$out/tests.txt" || status=1

echo "== benchmarks/imagenet.py on cuda"
python benchmarks/imagenet.py --device cuda --images 8 --repeats 3 --skip-ray 2>&1 | tee "$out/benchmark.txt" \
    || status=1

if [ -d "$shared/val1300" ]; then
    echo "== roiroa run, examples/imagenet_mobilenet.toml, --quick, on cuda"
    python -m roiroa run --config examples/imagenet_mobilenet.toml --quick --device cuda \
        --data "$shared/val1300" --labels "$shared/val1300/labels.csv" \
        --class-index "$shared/imagenet_class_index.json" \
        --weights "$shared/models/mobilenetV1X0.25_pretrain.tar" --out "$out/run" --overwrite --no-cache \
        2>&1 | tail -40 | tee "$out/run.txt" || status=1
fi
exit $status
