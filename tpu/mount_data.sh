#!/usr/bin/env bash
# Makes the data (and the run's workdir) visible at the same path on every worker:
#   BUCKET=NAME       mounts the Cloud Storage bucket with gcsfuse at GCS_MOUNT (/mnt/gcs),
#                     read-write: put the TFDS data, the CLIP and MAE weights and the workdirs
#                     there (gcsfuse is installed from Google's apt repository if missing);
#   DISK_DEVICE=DEV   mounts the persistent disk that tpu/create.sh attached with DATA_DISK,
#                     read-only, at DISK_MOUNT (/mnt/disk): data only, since no worker may
#                     write to it (the workdir then goes on the bucket).
# Both may be given. Mounts do not survive a recreated TPU: run this again after one.
# Usage: TPU_NAME=uniemox ZONE=us-central2-b BUCKET=my-bucket [DISK_DEVICE=/dev/sdb] \
#          bash tpu/mount_data.sh [--flag=value ...]
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected arguments: ${ARGS[*]} (settings are --name=value flags)"
require TPU_NAME ZONE
[ -n "$BUCKET" ] || [ -n "${DISK_DEVICE:-}" ] || \
  die "set BUCKET=NAME (a Cloud Storage bucket) or DISK_DEVICE=/dev/... (a disk attached with DATA_DISK), or both"

if [ -n "$BUCKET" ]; then
  read -r -a fuse_flags <<< "$GCSFUSE_FLAGS"
  flags=""
  for flag in ${fuse_flags[@]+"${fuse_flags[@]}"}; do flags+=" $(quote "$flag")"; done
  mnt=$(quote "$GCS_MOUNT")
  # $(lsb_release ...) and $(id ...) below are for the worker's shell to expand.
  # shellcheck disable=SC2016
  {
    apt_source='deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main'
    get_gcsfuse="command -v gcsfuse >/dev/null || { echo \"$apt_source\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
    get_gcsfuse+=' && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null'
    get_gcsfuse+=' && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; }'
  }
  mount="{ mountpoint -q $mnt || { sudo mkdir -p $mnt && sudo chown \"\$(id -u):\$(id -g)\" $mnt && gcsfuse$flags $(quote "$BUCKET") $mnt; }; }"
  tpu_ssh all "$get_gcsfuse && $mount && ls $mnt >/dev/null"
  say "gs://$BUCKET is at $GCS_MOUNT on every worker"
fi

if [ -n "${DISK_DEVICE:-}" ]; then
  mnt=$(quote "$DISK_MOUNT")
  # noload: a disk attached read-only cannot replay its ext4 journal.
  tpu_ssh all "mountpoint -q $mnt || { sudo mkdir -p $mnt && sudo mount -o ro,noload $(quote "$DISK_DEVICE") $mnt; }"
  say "$DISK_DEVICE is at $DISK_MOUNT (read-only) on every worker"
fi
