#!/usr/bin/env bash
# maepp's train step and the official PyTorch release's (the peer), timed in one run on the same
# GPU, in bfloat16, into one results file: one JSON line per program and batch (maepp:
# `maepp.tools.bench step`; peer: benchmarks/peer_step.py with bf16 autocast, fused SDPA and
# torch.compile, the best the release gets with standard PyTorch switches).
#   PEER_SRC=DIR benchmarks/peer.sh [RESULTS.jsonl]
# DIR holds the release's src/ (benchmarks/README.md says how to get it).
# Environment: SIZE (default base), BATCHES (default "512 128"), DEVICE (default cuda), PYTHON,
# MAEPP_ARGS (more `maepp.tools.bench step` flags, e.g. "--variant model.attention=xla --profile_dir D").
# Default RESULTS: benchmarks/results/<gpu>_<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PEER_SRC:?set PEER_SRC to the folder holding the release's src/ (benchmarks/README.md)}"
python=${PYTHON:-python3}
size=${SIZE:-base}
device=${DEVICE:-cuda}
read -r -a batches <<<"${BATCHES:-512 128}"
read -r -a maepp_args <<<"${MAEPP_ARGS:-}"
if [[ -z ${1:-} ]]; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | awk '{print tolower($2)}')
  set -- "benchmarks/results/${gpu}_$(date +%F).jsonl"
fi
results=$1
mkdir -p "$(dirname "$results")"
other_batches=()
for batch in "${batches[@]:1}"; do other_batches+=(--variant "batch_size=$batch"); done
"$python" -m maepp.tools.bench step --config "configs/audiomaepp.py:$size" --config.model.dtype=bfloat16 \
  --config.batch_size="${batches[0]}" --steps 20 "${other_batches[@]}" "${maepp_args[@]}" |
  tee /dev/stderr | grep '^{' >>"$results"
for batch in "${batches[@]}"; do
  "$python" benchmarks/peer_step.py --device "$device" --size "$size" --batch "$batch" --steps 20 \
    --amp bf16 --sdpa --compile | tee /dev/stderr | grep '^{' >>"$results"
done
echo "results: $results"
