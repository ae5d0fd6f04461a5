#!/usr/bin/env bash
# Launches `main.py` on every worker of a TPU VM slice and relaunches it after a pre-emption
# until the run has written done.json (the same command resumes from the last checkpoint).
# Usage: TPU_NAME=uniemox ZONE=us-central2-b bash tpu/run.sh CONFIG WORKDIR [--config.key=value ...]
#   CONFIG   e.g. configs/pretrain.py or configs/finetune.py:emo8
#   WORKDIR  shared storage every worker sees (a gs:// bucket mounted, or NFS)
# DRY_RUN=1 prints the gcloud commands instead of running them. MAX_RESTARTS (default 20).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
[ $# -ge 2 ] || { echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2; exit 2; }
CONFIG="$1"; WORKDIR="$2"; shift 2
run() { if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

cmd="cd uniemox-jax && HF_HUB_OFFLINE=1 .venv/bin/python main.py --config=$CONFIG --workdir=$WORKDIR --distributed"
for arg in "$@"; do cmd+=" $(printf '%q' "$arg")"; done

for attempt in $(seq 1 "${MAX_RESTARTS:-20}"); do
  echo "== attempt $attempt: $CONFIG → $WORKDIR"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "$cmd" || true
  if [ "${DRY_RUN:-0}" = 1 ] || run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" \
      --worker=0 --command "test -f $WORKDIR/done.json"; then
    echo "== finished: $WORKDIR/done.json"; exit 0
  fi
  echo "== not finished (pre-empted?); waiting for the TPU to be ready, then resuming"
  sleep 60
done
echo "gave up after ${MAX_RESTARTS:-20} attempts" >&2; exit 1
