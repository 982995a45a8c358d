#!/usr/bin/env bash
# GPU check of the CUDA paths, for a GPU machine that got this repository with binaries built on
# another machine (no Rust toolchain here): `cargo build --release -p vpetl-tools --bins` there, then
# carry target/release/{env,bench,train,dist_train,libvpetl_cuda_shim.so}. Needs a Python with torch
# 2.11 (the PyPI wheel, as the binaries link its libtorch) and timm: VPETL_PYTHON, else .venv/bin/python.
#
# Checks, in under five minutes on an H100:
#   1. CUDA is available to the binaries and used (device cuda:0);
#   2. NCCL at world size 1 all-reduces (RANK/WORLD_SIZE/MASTER_* set as torchrun would);
#   3. a ViT-B/16 + LoRA training step runs in bf16 autocast (logits come out bf16), with its step
#      time beside timm + PyTorch's for the same setting, and peak CUDA memory of both;
#   4. the same with the frozen backbone stored in bf16, and fp16 with the dynamic loss scaler;
#   5. a real training run (quickstart LoRA on MNIST-1k, bf16) through `dist_train 1` on NCCL writes
#      `peak_memory_mb` (the CUDA caching allocator's peak) to results.json and `memory` to the logs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=${VPETL_BIN:-target/release}
py=${VPETL_PYTHON:-$root/.venv/bin/python}
[[ -x $py ]] || py=$(command -v python3)
export VPETL_PYTHON=$py
for b in env bench train dist_train; do
  [[ -x $bin/$b ]] || { echo "gpu-check: $bin/$b is missing (build with cargo build --release -p vpetl-tools --bins)" >&2; exit 2; }
done
[[ -f $bin/libvpetl_cuda_shim.so ]] || echo "gpu-check: warning: $bin/libvpetl_cuda_shim.so is missing: no NCCL, no CUDA memory statistics" >&2
torch_dir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VPETL_CUDA_SHIM="$root/$bin/libvpetl_cuda_shim.so"
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

echo "== 1. runtime"
"$py" -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))'
"$bin/env" | tee /tmp/gpu-check-env.txt
grep -q 'CUDA available *true' /tmp/gpu-check-env.txt || fail "the binaries do not see CUDA"

echo "== 2-3. NCCL world size 1; ViT-B/16 + LoRA train step, bf16 autocast, vs timm + PyTorch"
RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$(free_port) \
  timeout 240 "$bin/bench" gpu-step --dtype bfloat16 --batch 64 --warmup 3 --steps 10 | tee /tmp/gpu-check-step.txt
grep -q 'all-reduce: Nccl backend, world size 1, rank 0: ok' /tmp/gpu-check-step.txt || fail "NCCL all-reduce"
grep -q 'device: Cuda(0)' /tmp/gpu-check-step.txt || fail "not on cuda:0"
grep -q 'logits BFloat16' /tmp/gpu-check-step.txt || fail "autocast did not produce bf16 logits"

echo "== 4. frozen backbone in bf16; fp16 with the dynamic loss scaler"
timeout 120 "$bin/bench" gpu-step --dtype bfloat16 --frozen-bf16 --batch 64 --warmup 2 --steps 5 --no-reference
timeout 120 "$bin/bench" gpu-step --dtype float16 --batch 64 --warmup 2 --steps 5 --no-reference

echo "== 5. dist_train 1 (NCCL) on the quickstart, bf16: memory in logs and results.json"
work=$(mktemp -d)
timeout 240 "$bin/dist_train" 1 configs/quickstart/lora_vit_tiny_mnist1k.yaml --work-dir "$work" \
  --cfg-options train_cfg.max_epochs=2 optim_wrapper.type=AmpOptimWrapper optim_wrapper.dtype=bfloat16
"$py" - "$work/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("results.json: metric", r["metric"], "peak_memory_mb", r["peak_memory_mb"])
assert 0 < r["peak_memory_mb"] < 4096, "peak_memory_mb should be the CUDA allocator's peak (MB)"
EOF
grep -h "\"memory\"" "$work"/*/vis_data/scalars.json | head -2 || true
echo "gpu-check: all checks passed"
