#!/usr/bin/env bash
# Runs a command with libtorch's operators timed (opprof.cpp) and writes the per-operator table.
#
#   benchmarks/opprof/run.sh OUT.txt COMMAND [ARGS...]
#   benchmarks/opprof/compare.py OURS.txt REFERENCE.txt [ROWS]
#   OPPROF_PARENTS=1 benchmarks/opprof/run.sh ...   # lines "caller > operator": who calls what
#
# Example, the quickstart model's LoRA step on both sides (the reference needs our weights first):
#   d=$(mktemp -d); b=target/release/bench
#   $b --threads 2 step-ours --size tiny --method lora --repeats 1 --warmup 0 --dir $d
#   benchmarks/opprof/run.sh /tmp/ours.txt $b --threads 2 step-ours --size tiny --method lora --repeats 100
#   benchmarks/opprof/run.sh /tmp/ref.txt .venv/bin/python benchmarks/train_step.py $d --backbone \
#     '{"type": "ViT", "img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}' \
#     --num-classes 10 --method lora --options '{"rank": 8, "alpha": 8, "parts": ["q", "v"]}' \
#     --batch 50 --repeats 100 --threads 2
#   benchmarks/opprof/compare.py /tmp/ours.txt /tmp/ref.txt
# The library is built once into target/opprof/ against scripts/setup's libtorch.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 2,16p "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$1; shift
torch=$(sed -n 's/^LIBTORCH = "\(.*\)"$/\1/p' "$root/.cargo/config.toml")
[[ -n "$torch" ]] || { echo "opprof: no LIBTORCH in .cargo/config.toml: run scripts/setup" >&2; exit 1; }
lib="$root/target/opprof/libopprof.so"
src="$root/benchmarks/opprof/opprof.cpp"
if [[ ! -f "$lib" || "$src" -nt "$lib" ]]; then
  mkdir -p "$(dirname "$lib")"
  g++ -O2 -shared -fPIC -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -I"$torch/include" \
    -I"$torch/include/torch/csrc/api/include" "$src" -o "$lib" -L"$torch/lib" -ltorch_cpu -lc10 -Wl,-rpath,"$torch/lib"
fi
OPPROF_OUT="$out" LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" "$@"
