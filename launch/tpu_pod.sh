#!/usr/bin/env bash
# maepp.train on every worker of Cloud TPU VM pod slices, one process per worker, detached.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project ID] [--num_slices N] --workdir gs://BUCKET/run \
#       [--config configs/audiomaepp.py:base] [--max_restarts N] [--dry-run] [-- TRAIN_FLAGS...]
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--num_slices N] --logs | --status | --stop
#
# Starting a run, on all workers of each slice (gcloud compute tpus tpu-vm ... --worker=all):
#   1. copy this checkout (git ls-files, so no venv or runs) to ~/maepp;
#   2. install it into ~/maepp/.venv: requirements.txt's pinned stack (less the CPU torch and the
#      test tools) and jax[tpu] at its version;
#   3. start launch/tpu_worker.sh detached (setsid nohup): the run outlives this terminal and the
#      ssh session, writes ~/maepp/logs/train.log, and starts again after a failure, up to
#      --max_restarts times (0 by default), as `python -m maepp.train --distributed`.
# The workdir must be a bucket: every worker writes its shards of each checkpoint there.
#   --logs    follows every worker's train.log
#   --status  prints each worker's state: running (restart K of N), exited 0, stopping, failed
#   --stop    sends the runs SIGTERM: they agree on a step, save it and exit 0
# Several slices (--num_slices N > 1, joined by the data-centre network) are the TPU VMs
# NAME-0 ... NAME-(N-1), as a queued resource made with `gcloud compute tpus queued-resources
# create NAME --node-count N --node-prefix NAME ...` names them; each worker gets the MEGASCALE_*
# variables JAX joins slices by: slice 0's first worker as coordinator, the slice count and its id.
# Every step is idempotent, so after a preemption (spot VMs, queued resources) re-running the same
# command on the re-created slices resumes from the newest checkpoint in the workdir.
set -euo pipefail

usage() {
  echo "usage: $0 --tpu NAME --zone ZONE [--project ID] [--num_slices N] (--workdir gs://... [--config CONFIG]" \
    "[--max_restarts N] [-- TRAIN_FLAGS...] | --logs | --status | --stop) [--dry-run]" >&2
  exit 2
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
tpu=""
zone=""
project=""
workdir=""
config="configs/audiomaepp.py:base"
num_slices=1
max_restarts=0
mode=start
dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --num_slices) num_slices=$2; shift 2 ;;
    --max_restarts) max_restarts=$2; shift 2 ;;
    --logs) mode=logs; shift ;;
    --status) mode=status; shift ;;
    --stop) mode=stop; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ -n $tpu && -n $zone && $num_slices =~ ^[1-9][0-9]*$ && $max_restarts =~ ^[0-9]+$ ]] || usage
if [[ $mode == start && -z $workdir ]]; then
  usage
fi
if [[ $mode == start && $workdir != gs://* ]]; then
  echo "tpu_pod.sh: --workdir must be a gs:// bucket path that every worker can write, not ${workdir}" >&2
  exit 2
fi

target=(--zone "$zone")
[[ -n $project ]] && target+=(--project "$project")
slices=("$tpu")
if ((num_slices > 1)); then
  slices=()
  for ((i = 0; i < num_slices; i++)); do slices+=("${tpu}-${i}"); done
fi

run() {
  if ((dry_run)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

on_all_workers() {  # SLICE COMMAND: a shell command on every worker of one slice
  run gcloud compute tpus tpu-vm ssh "$1" --worker=all "${target[@]}" --command="$2"
}

logs_dir="\$HOME/maepp/logs"  # expanded by the worker's shell
case $mode in
  logs)  # every slice's workers at once (a dry run lists them in order)
    for slice in "${slices[@]}"; do
      if ((dry_run)); then
        on_all_workers "$slice" "tail -n 100 -F ${logs_dir}/train.log"
      else
        on_all_workers "$slice" "tail -n 100 -F ${logs_dir}/train.log" &
      fi
    done
    wait
    exit 0 ;;
  status)
    for slice in "${slices[@]}"; do
      on_all_workers "$slice" "echo \"${slice} \$(hostname): \$(cat ${logs_dir}/state 2>/dev/null || echo never started)\""
    done
    exit 0 ;;
  stop)
    for slice in "${slices[@]}"; do
      on_all_workers "$slice" "echo stopping > ${logs_dir}/state && kill -TERM \$(cat ${logs_dir}/train.pid)"
    done
    exit 0 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jax_version=$(sed -n 's/^jax==//p' "${repo}/requirements.txt")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
bundle=${scratch}/maepp.tar.gz
git -C "$repo" ls-files > "${scratch}/files"
run tar -czf "$bundle" -C "$repo" -T "${scratch}/files"
install="mkdir -p ~/maepp && tar -xzf ~/maepp.tar.gz -C ~/maepp && cd ~/maepp"
install+=" && { [ -x .venv/bin/python ] || python3 -m venv .venv; }"
# The stack make tests (requirements.txt's pins up to its extras: no CPU torch, no test tools), plus
# libtpu at the version jax names.
install+=" && sed '/^# Extras \\[torch\\]/,\$d' requirements.txt > pod-requirements.txt"
install+=" && .venv/bin/pip install --quiet -r pod-requirements.txt 'jax[tpu]==${jax_version}'"
install+=" && .venv/bin/pip install --quiet --no-deps -e ."
for slice in "${slices[@]}"; do
  run gcloud compute tpus tpu-vm scp "$bundle" "${slice}:maepp.tar.gz" --worker=all "${target[@]}"
  on_all_workers "$slice" "$install"
done

megascale=()
if ((num_slices > 1)); then
  if ((dry_run)); then
    coordinator=COORDINATOR_IP
    run gcloud compute tpus tpu-vm describe "${slices[0]}" "${target[@]}" --format='value(networkEndpoints[0].ipAddress)'
  else
    coordinator=$(gcloud compute tpus tpu-vm describe "${slices[0]}" "${target[@]}" \
      --format='value(networkEndpoints[0].ipAddress)')
  fi
  megascale=(env "MEGASCALE_COORDINATOR_ADDRESS=${coordinator}:8080" "MEGASCALE_PORT=8080"
    "MEGASCALE_NUM_SLICES=${num_slices}")
fi
for i in "${!slices[@]}"; do
  train=("${megascale[@]}")
  ((num_slices > 1)) && train+=("MEGASCALE_SLICE_ID=${i}")
  train+=(.venv/bin/python -m maepp.train --distributed --config "$config" --workdir "$workdir" "$@")
  worker=$(printf '%q ' bash launch/tpu_worker.sh --max_restarts "$max_restarts" -- "${train[@]}")
  on_all_workers "${slices[$i]}" "cd ~/maepp && mkdir -p logs && setsid nohup ${worker}< /dev/null > logs/worker.out 2>&1 &"
done
if ((!dry_run)); then
  echo "tpu_pod.sh: started on ${#slices[@]} slice(s); follow with --logs, see each worker with --status," \
    "stop (saving the current step) with --stop" >&2
fi
