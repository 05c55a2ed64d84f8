#!/usr/bin/env bash
# N maepp.train processes on this machine, each with its own fake CPU devices, joined through
# jax.distributed with the coordinator on 127.0.0.1: a pod slice's code path on one host.
#
#   launch/local.sh NPROC [--devices 4] [--port PORT] [--max_restarts N] [--dry-run] -- TRAIN_FLAGS...
#   launch/local.sh 2 -- --config configs/audiomaepp.py:micro --workdir runs/local
#
# If one process fails, the others are stopped at once (rather than waiting for it inside a
# collective until JAX's heartbeat times out). With --max_restarts N the job is then started
# again, up to N times, and resumes from the workdir's newest checkpoint (each start records its
# restart number in WORKDIR/run_info.jsonl); otherwise the launcher exits with that failure.
# Running the same command again resumes too. The port is one the OS hands out, unless --port
# names one. XLA_FLAGS set by the caller are kept; the fake device count is added to them.
set -euo pipefail

usage() {
  echo "usage: $0 NPROC [--devices N] [--port PORT] [--max_restarts N] [--dry-run] -- TRAIN_FLAGS..." >&2
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
port=""
max_restarts=0
dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --devices) devices=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --max_restarts) max_restarts=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ $max_restarts =~ ^[0-9]+$ ]] || usage
# The checkout's environment (what `make` builds), as launch/slurm.sbatch uses; PYTHON overrides it.
here=$(cd "$(dirname "$0")/.." && pwd)
default_python=python3
[[ -x $here/.venv/bin/python ]] && default_python=$here/.venv/bin/python
python=${PYTHON:-$default_python}
xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${devices}"

# One start of the job: every process, until all end or one fails; -> the first failure's status.
start_job() {
  local restart=$1 coordinator_port=$port pids=() i status
  shift
  [[ -n $coordinator_port ]] || coordinator_port=$("$python" -c \
    'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for ((i = 0; i < processes; i++)); do
    local command=(env "XLA_FLAGS=${xla_flags}" "MAEPP_RESTART=${restart}" "$python" -m maepp.train
      --coordinator "127.0.0.1:${coordinator_port}" --num_processes "$processes" --process_id "$i" "$@")
    if ((dry_run)); then
      printf '%q ' "${command[@]}"
      printf '\n'
    else
      "${command[@]}" &
      pids+=($!)
    fi
  done
  for _ in "${pids[@]}"; do
    status=0
    wait -n || status=$?
    if ((status != 0)); then
      # SIGKILL, not SIGTERM: on SIGTERM maepp.train saves a checkpoint, a collective that can
      # never finish without the process that died.
      kill -KILL "${pids[@]}" 2>/dev/null || true
      wait || true
      return "$status"
    fi
  done
  return 0
}

restart=0
while true; do
  status=0
  start_job "$restart" "$@" || status=$?
  ((dry_run)) && exit 0
  ((status == 0)) && exit 0
  if ((restart >= max_restarts)); then
    echo "local.sh: a training process exited with status ${status}; the others were stopped" \
      "(restarts used: ${restart} of ${max_restarts})" >&2
    exit "$status"
  fi
  restart=$((restart + 1))
  echo "local.sh: a training process exited with status ${status}; the others were stopped; restart" \
    "${restart} of ${max_restarts}, from the newest checkpoint" >&2
done
