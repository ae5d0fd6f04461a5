#!/usr/bin/env bash
# Launches `main.py` on every worker of a TPU VM slice and relaunches it after a pre-emption
# until the run has written done.json (the same command resumes from the last checkpoint).
# Usage: TPU_NAME=uniemox ZONE=us-central2-b bash tpu/run.sh CONFIG WORKDIR [--config.key=value ...]
#   CONFIG   e.g. configs/pretrain.py or configs/finetune.py:emo8 (relative to the project)
#   WORKDIR  shared storage every worker sees (a gs:// bucket mounted by tpu/mount_data.sh)
# Each worker's output is also appended to ~/uniemox-logs/<WORKDIR's name>.log there
# (tpu/logs.sh follows it). After a failed launch it waits RETRY_WAIT seconds (60); a TPU
# found PREEMPTED (or a queued resource SUSPENDED) is deleted, created, set up and mounted
# again with RECREATE=1 (the same settings as tpu/create.sh, setup.sh and mount_data.sh).
# Settings may also be given as flags before CONFIG (--zone=...). Keep this running (tmux,
# or a small VM): closing it ends the run on the workers. MAX_RESTARTS (default 20).
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
require TPU_NAME ZONE
[ $# -ge 2 ] || { echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2; exit 2; }
CONFIG="$1"; WORKDIR="${2%/}"; shift 2

# The ~ is the worker's home: it stays unquoted for the worker's shell.
# shellcheck disable=SC2088
log="~/uniemox-logs/$(quote "$(basename "$WORKDIR").log")"
cmd="mkdir -p ~/uniemox-logs && cd $(quote "$REMOTE_DIR") && HF_HUB_OFFLINE=1 .venv/bin/python main.py"
cmd+=" $(quote "--config=$CONFIG") $(quote "--workdir=$WORKDIR") --distributed"
for arg in "$@"; do cmd+=" $(quote "$arg")"; done
cmd+=" 2>&1 | tee -a $log"

# Waits until the TPU can take the next launch; recreates it when it was pre-empted.
wait_until_ready() {
  local state
  while :; do
    tpu_state state READY
    case $state in
      READY|ACTIVE) return 0 ;;
      PREEMPTED|TERMINATED|FAILED|SUSPENDING|SUSPENDED|'')
        if [ "$RECREATE" != 1 ]; then
          printf 'error: TPU %s is %s. Recreate it (tpu/delete.sh, create.sh, setup.sh, mount_data.sh) and run this again, or run this with RECREATE=1 to have it done.\n' \
            "$TPU_NAME" "${state:-gone}" >&2
          exit 1
        fi
        say "TPU $TPU_NAME is ${state:-gone}: recreating it"
        [ -z "$state" ] || bash "$TPU_DIR/delete.sh"
        bash "$TPU_DIR/create.sh"
        bash "$TPU_DIR/setup.sh"
        if [ -n "$BUCKET" ] || [ -n "${DISK_DEVICE:-}" ]; then bash "$TPU_DIR/mount_data.sh"; fi
        return 0 ;;
      *) say "TPU $TPU_NAME is $state; checking again in ${POLL_SECONDS}s"
         sleep "$POLL_SECONDS" ;;
    esac
  done
}

for attempt in $(seq 1 "$MAX_RESTARTS"); do
  say "attempt $attempt of $MAX_RESTARTS: $CONFIG → $WORKDIR"
  tpu_ssh all "$cmd" || say "main.py stopped before the end on some worker (pre-empted?)"
  if tpu_ssh 0 "test -f $(quote "$WORKDIR/done.json")"; then
    say "finished: $WORKDIR/done.json"; exit 0
  fi
  [ "$attempt" -lt "$MAX_RESTARTS" ] || break
  say "not finished; resuming in ${RETRY_WAIT}s, from the last checkpoint"
  sleep "$RETRY_WAIT"
  wait_until_ready
done
echo "gave up after $MAX_RESTARTS attempts; $WORKDIR has the last checkpoint (run this again to resume)" >&2
exit 1
