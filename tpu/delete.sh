#!/usr/bin/env bash
# Deletes the TPU VM (all its workers), or with QUEUED=1 the queued resource and its TPU.
# What lives on the workers goes with them; the bucket and the persistent disk stay.
# Usage: TPU_NAME=uniemox ZONE=us-central2-b [QUEUED=1] bash tpu/delete.sh [--flag=value ...]
# DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected arguments: ${ARGS[*]} (settings are --name=value flags)"
require TPU_NAME ZONE

# --quiet: no confirmation prompt, so that run.sh can recreate a pre-empted TPU unattended.
if [ "$QUEUED" = 1 ]; then
  # --force deletes the queued resource's TPU first, whatever state it is in.
  gc compute tpus queued-resources delete "$QR_ID" --zone="$ZONE" --force --quiet
  say "deleted queued resource $QR_ID and its TPU $TPU_NAME"
else
  gc compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
  say "deleted TPU $TPU_NAME"
fi
