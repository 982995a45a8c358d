#!/usr/bin/env bash
# The benchmark runner: builds `tools/bench` in release mode and writes every table of
# BENCHMARKS.md, with the machine and its load average, to benchmarks/results/<date>-<kind>.md.
#
#   benchmarks/run.sh                 # CPU tables (training steps, input pipeline, merging)
#   benchmarks/run.sh --gpu           # ... and the ViT-B/16 GPU training step with peak memory
#   benchmarks/run.sh --gpu-only      # only the GPU table
#   options: --threads N (intra-op threads, both sides; default 2), --repeats N (default 5),
#            --rounds N (times the two sides' processes alternate, per table; default 5: this shared
#            machine's slow spells last about a process, and with 3 rounds one of them moved a
#            table's median by up to 20 %)
#
# The reference side runs in $VPETL_PYTHON (scripts/setup's torch venv: torch, timm, torchvision).
# The GPU table needs a CUDA build of libtorch for both sides (LIBTORCH and the venv's torch) and
# nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2
repeats=5
rounds=5
kind=cpu
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpu) extra+=(--gpu); kind=cpu-gpu ;;
    --gpu-only) extra+=(--gpu-only); kind=gpu ;;
    --threads) threads="$2"; shift ;;
    --repeats) repeats="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    *) echo "run.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
cargo build --release -p vpetl-tools --bin bench
mkdir -p benchmarks/results
out="benchmarks/results/$(date -u +%Y-%m-%d-%H%M)-$kind.md"
echo "load before: $(uptime)"
target/release/bench --threads "$threads" --markdown "$out" all --repeats "$repeats" --rounds "$rounds" ${extra[@]+"${extra[@]}"}
echo "load after: $(uptime)"
