#!/usr/bin/env bash
# Train-step time and MFU of each model size in float32 and bfloat16 on this machine's devices:
# one `python -m maepp.tools.bench step` JSON line per run, on stdout.
#   benchmarks/train_step.sh [SIZE:GLOBAL_BATCH ...]     (default: small:512 base:512 large:256)
# PYTHON picks the interpreter (default: .venv/bin/python when it exists, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
default_python=python3
[[ -x .venv/bin/python ]] && default_python=.venv/bin/python
python=${PYTHON:-$default_python}
runs=("$@")
[[ ${#runs[@]} -gt 0 ]] || runs=(small:512 base:512 large:256)
for run in "${runs[@]}"; do
  for dtype in float32 bfloat16; do
    "$python" -m maepp.tools.bench step --config "configs/audiomaepp.py:${run%%:*}" \
      --config.batch_size="${run##*:}" --config.model.dtype="$dtype" --steps 20 --json
  done
done
