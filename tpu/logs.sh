#!/usr/bin/env bash
# Follows a run's output on the workers: the ~/uniemox-logs/<WORKDIR's name>.log that
# tpu/run.sh appends to on each worker. WORKER=0 (the default) is the process that writes
# the metrics; WORKER=all interleaves every worker's. Ctrl-C stops following, not the run.
# Usage: TPU_NAME=uniemox ZONE=us-central2-b [WORKER=0|all] [LOG_LINES=100] \
#          bash tpu/logs.sh WORKDIR
# The run's own files are in WORKDIR too: metrics.jsonl, and one absl log per process.
# DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
require TPU_NAME ZONE
[ $# -eq 1 ] || { echo "usage: $0 WORKDIR (as given to tpu/run.sh)" >&2; exit 2; }
name=$(basename "${1%/}")

tpu_ssh "$WORKER" "tail -n $LOG_LINES -F ~/uniemox-logs/$(quote "$name.log")"
