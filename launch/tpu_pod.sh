#!/usr/bin/env bash
# maepp.train on every worker of a Cloud TPU VM pod slice, one process per worker.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project ID] --workdir gs://BUCKET/run \
#       [--config configs/audiomaepp.py:base] [--dry-run] [-- TRAIN_FLAGS...]
#
# Three steps, each on all workers (gcloud compute tpus tpu-vm ... --worker=all):
#   1. copy this checkout (git ls-files, so no venv or runs) to ~/maepp;
#   2. install it into ~/maepp/.venv: requirements.txt's pinned stack (less the CPU torch and the
#      test tools) and jax[tpu] at its version;
#   3. run python -m maepp.train --distributed (JAX finds the other workers itself).
# The workdir must be a bucket: every worker writes its shards of each checkpoint there. Every
# step is idempotent, so after a preemption (spot VMs, queued resources) re-running the same
# command on the re-created slice resumes from the newest checkpoint in the workdir.
set -euo pipefail

usage() {
  echo "usage: $0 --tpu NAME --zone ZONE [--project ID] --workdir gs://... [--config CONFIG] [--dry-run] [-- TRAIN_FLAGS...]" >&2
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
dry_run=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ -n $tpu && -n $zone && -n $workdir ]] || usage
if [[ $workdir != gs://* ]]; then
  echo "tpu_pod.sh: --workdir must be a gs:// bucket path that every worker can write, not ${workdir}" >&2
  exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jax_version=$(sed -n 's/^jax==//p' "${repo}/requirements.txt")
target=(--zone "$zone")
[[ -n $project ]] && target+=(--project "$project")

run() {
  if ((dry_run)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

scratch=$(mktemp -d)
bundle=${scratch}/maepp.tar.gz
git -C "$repo" ls-files > "${scratch}/files"
run tar -czf "$bundle" -C "$repo" -T "${scratch}/files"
run gcloud compute tpus tpu-vm scp "$bundle" "${tpu}:maepp.tar.gz" --worker=all "${target[@]}"
install="mkdir -p ~/maepp && tar -xzf ~/maepp.tar.gz -C ~/maepp && cd ~/maepp"
install+=" && { [ -x .venv/bin/python ] || python3 -m venv .venv; }"
# The stack make tests (requirements.txt's pins up to its extras: no CPU torch, no test tools), plus
# libtpu at the version jax names.
install+=" && sed '/^# Extras \\[torch\\]/,\$d' requirements.txt > pod-requirements.txt"
install+=" && .venv/bin/pip install --quiet -r pod-requirements.txt 'jax[tpu]==${jax_version}'"
install+=" && .venv/bin/pip install --quiet --no-deps -e ."
run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all "${target[@]}" --command="$install"
train=$(printf '%q ' .venv/bin/python -m maepp.train --distributed --config "$config" --workdir "$workdir" "$@")
train=${train% }
run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all "${target[@]}" --command="cd ~/maepp && ${train}"
