#!/usr/bin/env bash
# Creates the TPU VM (one host such as v4-8, or a pod slice such as v4-32 with one VM per
# host), unless it exists. QUEUED=1 asks through a queued resource and waits until it is
# ACTIVE; SPOT=1 asks for Spot (pre-emptible) capacity; DATA_DISK=NAME attaches that
# persistent disk read-only to every worker.
# Usage: TPU_NAME=uniemox ZONE=us-central2-b [ACCELERATOR=v4-32] [SPOT=1] [QUEUED=1] \
#          [VALID_UNTIL=6h] [DATA_DISK=NAME PROJECT=ID] bash tpu/create.sh [--flag=value ...]
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected arguments: ${ARGS[*]} (settings are --name=value flags)"
require TPU_NAME ZONE

extra=()
[ "$SPOT" = 1 ] && extra+=(--spot)
if [ -n "${DATA_DISK:-}" ]; then
  # The disk's full name needs the project; read-only is the mode many VMs can share.
  require PROJECT
  extra+=("--data-disk=source=projects/$PROJECT/zones/$ZONE/disks/$DATA_DISK,mode=read-only")
fi

if [ "$QUEUED" = 1 ]; then
  tpu_state state ""
  if [ -n "$state" ]; then
    say "queued resource $QR_ID exists ($state)"
  else
    [ -n "${VALID_UNTIL:-}" ] && extra+=(--valid-until-duration="$VALID_UNTIL")
    gc compute tpus queued-resources create "$QR_ID" --node-id="$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" \
      ${extra[@]+"${extra[@]}"}
  fi
  # The request waits in a queue until capacity is free; the TPU exists once it is ACTIVE.
  while :; do
    tpu_state state ACTIVE
    case $state in
      ACTIVE) break ;;
      FAILED|SUSPENDING|SUSPENDED|'')
        printf 'error: queued resource %s is %s; see gcloud compute tpus queued-resources describe %s --zone=%s, then tpu/delete.sh and try again\n' \
          "$QR_ID" "${state:-gone}" "$QR_ID" "$ZONE" >&2
        exit 1 ;;
      *) say "queued resource $QR_ID is $state; checking again in ${POLL_SECONDS}s"
         sleep "$POLL_SECONDS" ;;
    esac
  done
  say "TPU $TPU_NAME ($ACCELERATOR) is ready"
  exit 0
fi

tpu_state state ""
case $state in
  '') ;;
  PREEMPTED|TERMINATED|FAILED)
    die "TPU $TPU_NAME exists but is $state: delete it first (tpu/delete.sh), or let tpu/run.sh do both with RECREATE=1" ;;
  *) say "TPU $TPU_NAME exists ($state)"; exit 0 ;;
esac
gc compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --version="$RUNTIME_VERSION" ${extra[@]+"${extra[@]}"}
say "TPU $TPU_NAME ($ACCELERATOR) is ready"
