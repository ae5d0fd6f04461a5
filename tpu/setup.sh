#!/usr/bin/env bash
# Creates (if needed) a Cloud TPU VM slice and installs this repository on every worker.
# Usage: TPU_NAME=uniemox ZONE=us-central2-b [ACCELERATOR=v4-32] [VERSION=tpu-ubuntu2204-base] \
#          [REPO_URL=https://github.com/<you>/uniemox-jax] bash tpu/setup.sh
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
REPO_URL="${REPO_URL:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo REPO_URL)}"
run() { if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

if ! run gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION"
fi
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "git clone $REPO_URL uniemox-jax 2>/dev/null || git -C uniemox-jax pull; \
   cd uniemox-jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
   && .venv/bin/pip install -q -U 'jax[tpu]'"
