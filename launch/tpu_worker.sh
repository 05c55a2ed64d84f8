#!/usr/bin/env bash
# One TPU VM worker's side of launch/tpu_pod.sh: runs the training command there, detached from
# the ssh session that started it, and again after a failure, up to --max_restarts times.
#
#   launch/tpu_worker.sh [--max_restarts N] [--delay_s 10] -- COMMAND...
#
# Its files, in ~/maepp/logs/ (tpu_pod.sh --logs, --status and --stop read them):
#   train.log  everything the command prints, each start after the last
#   train.pid  the running command's process id (--stop sends it SIGTERM: it saves and exits 0)
#   state      one line: running (restart K of N), exited 0, stopping, or failed with its status
# Each start passes its restart number to maepp.train (MAEPP_RESTART), which records it in the
# workdir's run_info.jsonl. After a failure every worker's command has failed too (JAX stops a
# job whose process died), so each worker starts again and they join up once more.
set -euo pipefail

usage() {
  echo "usage: $0 [--max_restarts N] [--delay_s S] -- COMMAND..." >&2
  exit 2
}
max_restarts=0
delay_s=10  # before a restart: every worker's process has ended, and the coordinator's port is free
while [[ ${1:-} != -- ]]; do
  case ${1:-} in
    --max_restarts) max_restarts=$2; shift 2 ;;
    --delay_s) delay_s=$2; shift 2 ;;
    *) usage ;;
  esac
done
shift
[[ $# -gt 0 && $max_restarts =~ ^[0-9]+$ && $delay_s =~ ^[0-9]+$ ]] || usage
logs=${MAEPP_LOGS:-$HOME/maepp/logs}
mkdir -p "$logs"

restart=0
while true; do
  echo "running (restart ${restart} of ${max_restarts}) since $(date -u +%FT%TZ)" > "$logs/state"
  MAEPP_RESTART=$restart "$@" >> "$logs/train.log" 2>&1 &
  echo $! > "$logs/train.pid"
  status=0
  wait $! || status=$?
  if ((status == 0)); then
    echo "exited 0 at $(date -u +%FT%TZ)" > "$logs/state"
    exit 0
  fi
  if ((restart >= max_restarts)); then
    echo "failed with status ${status} at $(date -u +%FT%TZ) (restarts used: ${restart} of ${max_restarts})" \
      > "$logs/state"
    exit "$status"
  fi
  restart=$((restart + 1))
  echo "tpu_worker.sh: the command exited with status ${status}; restart ${restart} of ${max_restarts}" \
    >> "$logs/train.log"
  sleep "$delay_s"
done
