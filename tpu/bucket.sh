#!/usr/bin/env bash
# Creates the Cloud Storage bucket that every worker mounts (tpu/mount_data.sh), unless it
# exists, in the TPU's region and with hierarchical namespace, under which gcsfuse renames a
# directory in one step (checkpoints are written to a temporary directory and renamed).
# Then copies each LOCAL path given to gs://BUCKET/NAME: a folder with gcloud storage rsync
# (files already there are skipped, so an interrupted upload continues), a file with cp.
# Usage: BUCKET=my-bucket ZONE=us-central2-b bash tpu/bucket.sh [LOCAL NAME]...
#   e.g. bash tpu/bucket.sh $TFDS tfds $CLIP clip-vit-base-patch16
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
require BUCKET ZONE
[ $(($# % 2)) -eq 0 ] || { echo "usage: $0 [LOCAL NAME]... (pairs: a local path, its name in the bucket)" >&2; exit 2; }
region=${ZONE%-*}  # us-central2-b -> us-central2

query found "" gcloud storage buckets describe "gs://$BUCKET" --format='value(name)'
if [ -n "$found" ]; then
  say "gs://$BUCKET exists"
else
  gc storage buckets create "gs://$BUCKET" --location="$region" --uniform-bucket-level-access \
    --enable-hierarchical-namespace
fi
while [ $# -gt 0 ]; do
  src=${1%/}
  dest="gs://$BUCKET/${2#/}"
  if [ -f "$src" ]; then
    gc storage cp "$src" "$dest"
  elif [ -d "$src" ] || dry; then
    gc storage rsync --recursive "$src" "$dest"
  else
    die "$1 is neither a file nor a folder"
  fi
  shift 2
done
