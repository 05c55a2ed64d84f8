#!/usr/bin/env bash
# N maepp.train processes on this machine, each with its own fake CPU devices, joined through
# jax.distributed with the coordinator on 127.0.0.1: a pod slice's code path on one host.
#
#   launch/local.sh NPROC [--devices 4] [--port 12470] [--dry-run] -- TRAIN_FLAGS...
#   launch/local.sh 2 -- --config configs/audiomaepp.py:micro --workdir runs/local
#
# If one process fails, the others are stopped at once (rather than waiting for it inside a
# collective until JAX's heartbeat times out) and the launcher exits with that failure.
# Running the same command again resumes from the workdir's newest checkpoint.
# XLA_FLAGS set by the caller are kept; the fake device count is added to them.
set -euo pipefail

usage() {
  echo "usage: $0 NPROC [--devices N] [--port PORT] [--dry-run] -- TRAIN_FLAGS..." >&2
  exit 2
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
processes=$1
shift
devices=4
port=12470
dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --devices) devices=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
# The checkout's environment (what `make` builds), as launch/slurm.sbatch uses; PYTHON overrides it.
here=$(cd "$(dirname "$0")/.." && pwd)
default_python=python3
[[ -x $here/.venv/bin/python ]] && default_python=$here/.venv/bin/python
python=${PYTHON:-$default_python}

xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${devices}"
pids=()
for ((i = 0; i < processes; i++)); do
  command=(env "XLA_FLAGS=${xla_flags}" "$python" -m maepp.train
    --coordinator "127.0.0.1:${port}" --num_processes "$processes" --process_id "$i" "$@")
  if ((dry_run)); then
    printf '%q ' "${command[@]}"
    printf '\n'
  else
    "${command[@]}" &
    pids+=($!)
  fi
done
((dry_run)) && exit 0

for _ in "${pids[@]}"; do
  status=0
  wait -n || status=$?
  if ((status != 0)); then
    echo "local.sh: a training process exited with status ${status}; stopping the others" >&2
    # SIGKILL, not SIGTERM: on SIGTERM maepp.train saves a checkpoint, a collective that can
    # never finish without the process that died.
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait || true
    exit "$status"
  fi
done
