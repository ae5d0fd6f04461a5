# shellcheck shell=bash
# Sourced by every tpu/*.sh script: their settings and a `gcloud` that shows what it runs.
#
# Settings come from the environment or from flags before the script's own arguments:
# --zone=us-central2-b sets ZONE, --tpu-name=x sets TPU_NAME, --spot sets SPOT=1, and so on
# (a flag wins over the environment). The settings, with their defaults:
#   PROJECT          Google Cloud project (default: gcloud's configured project)
#   ZONE             zone of the TPU, e.g. us-central2-b (required)
#   TPU_NAME         name of the TPU VM, or of the queued resource's node (required)
#   ACCELERATOR      accelerator type: v4-8 (one host), v4-32 (4 hosts), v5litepod-16, v6e-8 ... (v4-8)
#   RUNTIME_VERSION  TPU software version (by accelerator: tpu-ubuntu2204-base for v2-v4,
#                    v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
#   SPOT             1: Spot capacity (pre-emptible, cheaper) (0)
#   QUEUED           1: ask through a queued resource, which waits for capacity (0)
#   QR_ID            the queued resource's name ($TPU_NAME-qr)
#   VALID_UNTIL      queued resources: give up waiting after this long, e.g. 6h (no limit)
#   DATA_DISK        name of a persistent disk to attach read-only to every worker (none)
#   REPO_URL         git URL to clone on every worker; unset: copy this checkout to them
#   REPO_REF         branch, tag or commit to check out from REPO_URL (the default branch)
#   REMOTE_DIR       where the project lives on each worker, relative to home (uniemox-jax)
#   PYTHON_VERSION   Python of the workers' virtual environment (3.12)
#   BUCKET           Cloud Storage bucket to mount with gcsfuse on every worker (none)
#   GCS_MOUNT        where the bucket is mounted (/mnt/gcs)
#   GCSFUSE_FLAGS    gcsfuse options (--implicit-dirs --rename-dir-limit=200000)
#   DISK_DEVICE      block device of DATA_DISK on the workers, e.g. /dev/sdb (none)
#   DISK_MOUNT       where that disk is mounted, read-only (/mnt/disk)
#   WORKER           logs.sh: the worker whose log to follow, or all (0)
#   LOG_LINES        logs.sh: lines of history to show first (100)
#   MAX_RESTARTS     run.sh: launches before giving up (20)
#   RETRY_WAIT       run.sh: seconds between a failed launch and the next (60)
#   RECREATE         run.sh: 1 = delete and recreate a pre-empted TPU, then set it up again (0)
#   POLL_SECONDS     seconds between state checks while waiting for a TPU (30)
#   DRY_RUN          1: print the commands, run nothing (0)

TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$TPU_DIR")

SETTINGS="PROJECT ZONE TPU_NAME ACCELERATOR RUNTIME_VERSION SPOT QUEUED QR_ID VALID_UNTIL \
DATA_DISK REPO_URL REPO_REF REMOTE_DIR PYTHON_VERSION BUCKET GCS_MOUNT GCSFUSE_FLAGS DISK_DEVICE \
DISK_MOUNT WORKER LOG_LINES MAX_RESTARTS RETRY_WAIT RECREATE POLL_SECONDS DRY_RUN"
SWITCHES="SPOT QUEUED RECREATE DRY_RUN"  # settings that a bare flag (--spot) turns on

say() {  # a progress note on stderr (stdout holds the commands of a dry run)
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '== [dry run] %s\n' "$*" >&2; else printf '== %s\n' "$*" >&2; fi
}
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

usage() {  # the calling script's header comment
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
  printf '\nSettings: environment variables, or flags before the arguments (ZONE: --zone=...).\n'
  sed -n 's/^#   /  /p' "$TPU_DIR/common.sh"
}

is_setting() { case " $SETTINGS " in *" $1 "*) return 0 ;; esac; return 1; }

flag_name() { printf -- '--%s' "$1" | tr '[:upper:]_' '[:lower:]-'; }  # ZONE -> --zone

# parse_settings "$@": reads the leading --flags into settings, fills in the defaults and
# leaves the script's own arguments in ARGS (use: set -- ${ARGS[@]+"${ARGS[@]}"}).
parse_settings() {
  ARGS=()
  local arg name var
  while [ $# -gt 0 ]; do
    arg=$1
    case $arg in
      -h|--help) usage; exit 0 ;;
      --) shift; break ;;
      --*=*) name=${arg%%=*} ;;
      --*) name=$arg ;;
      *) break ;;
    esac
    var=$(printf '%s' "${name#--}" | tr '[:lower:]-' '[:upper:]_')
    is_setting "$var" || die "unknown flag $name ($(basename "$0") --help lists the settings)"
    if [ "$arg" = "$name" ]; then
      case " $SWITCHES " in *" $var "*) ;; *) die "$name needs a value: $name=..." ;; esac
      printf -v "$var" '%s' 1
    else
      printf -v "$var" '%s' "${arg#*=}"
    fi
    shift
  done
  # shellcheck disable=SC2034  # read by the script that sources this file
  ARGS=("$@")
  set_defaults
}

# A yes/no setting read as 0 or 1 (1, true, yes, on / 0, false, no, off or empty).
switch() {
  local value
  value=$(printf '%s' "${!1:-0}" | tr '[:upper:]' '[:lower:]')
  case $value in
    1|true|yes|on) printf -v "$1" '%s' 1 ;;
    0|false|no|off|'') printf -v "$1" '%s' 0 ;;
    *) die "$1=${!1} is not a yes/no value (use 1 or 0)" ;;
  esac
}

count() {  # a setting that must be a whole number
  case ${!1} in ''|*[!0-9]*) die "$1=${!1} is not a whole number" ;; esac
}

default_runtime() {  # the TPU software version Google lists for JAX on each generation
  case $1 in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for ACCELERATOR=$1: set RUNTIME_VERSION" ;;
  esac
}

set_defaults() {
  local name
  for name in $SETTINGS; do printf -v "$name" '%s' "${!name-}"; done  # unset -> empty
  ACCELERATOR=${ACCELERATOR:-v4-8}
  case $ACCELERATOR in
    v[0-9]*-[0-9]*) ;;
    *) die "ACCELERATOR=$ACCELERATOR is not an accelerator type such as v4-8 or v4-32" ;;
  esac
  # VERSION is the name older versions of these scripts read.
  RUNTIME_VERSION=${RUNTIME_VERSION:-${VERSION:-$(default_runtime "$ACCELERATOR")}}
  QR_ID=${QR_ID:-${TPU_NAME:+$TPU_NAME-qr}}
  REMOTE_DIR=${REMOTE_DIR:-uniemox-jax}
  PYTHON_VERSION=${PYTHON_VERSION:-3.12}
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  GCS_MOUNT=${GCS_MOUNT:-/mnt/gcs}
  GCSFUSE_FLAGS=${GCSFUSE_FLAGS:---implicit-dirs --rename-dir-limit=200000}
  DISK_MOUNT=${DISK_MOUNT:-/mnt/disk}
  WORKER=${WORKER:-0}
  LOG_LINES=${LOG_LINES:-100}
  MAX_RESTARTS=${MAX_RESTARTS:-20}
  RETRY_WAIT=${RETRY_WAIT:-60}
  POLL_SECONDS=${POLL_SECONDS:-30}
  for name in $SWITCHES; do switch "$name"; done
  for name in LOG_LINES MAX_RESTARTS RETRY_WAIT POLL_SECONDS; do count "$name"; done
  # Exported so that a script run from another (run.sh recreating a TPU) sees the same.
  for name in $SETTINGS; do export "${name?}"; done
  export TPU_DIR REPO_DIR
}

require() {  # require NAME...: stop with a message naming each missing setting
  local name flag
  for name in "$@"; do
    if [ -z "${!name:-}" ]; then
      flag=$(flag_name "$name")
      die "set $name (environment) or $flag=... ($(basename "$0") --help lists the settings)"
    fi
  done
}

dry() { [ "$DRY_RUN" = 1 ]; }

# quote WORD: WORD as a shell reads it back (bare when safe, else in single quotes).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {  # show WORD...: one command line that a shell reads back as these words
  local line="" word
  for word in "$@"; do line+="${line:+ }$(quote "$word")"; done
  printf '%s\n' "$line"
}

# run CMD...: prints the command (on stdout under DRY_RUN=1, then stops there; else as
# "+ command" on stderr) and runs it.
run() {
  if dry; then show "$@"; return 0; fi
  printf '+ %s\n' "$(show "$@")" >&2
  "$@"
}

gc() { run gcloud "$@" ${PROJECT:+"--project=$PROJECT"}; }

# query VAR ANSWER CMD...: runs a read-only command and keeps its output in VAR; under
# DRY_RUN=1 it only prints the command and VAR is ANSWER (what a fresh project would say).
query() {
  local var=$1 answer=$2
  shift 2
  if dry; then
    show "$@" ${PROJECT:+"--project=$PROJECT"}
  else
    printf '+ %s\n' "$(show "$@" ${PROJECT:+"--project=$PROJECT"})" >&2
    answer=$("$@" ${PROJECT:+"--project=$PROJECT"} 2>/dev/null) || answer=""
  fi
  printf -v "$var" '%s' "$answer"
}

tpu_ssh() {  # tpu_ssh WORKER COMMAND: runs COMMAND in a login shell on worker WORKER (or all)
  gc compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

# The TPU's state: READY, PREEMPTED ... for a TPU VM; ACTIVE, SUSPENDED ... for a queued
# resource; empty when it does not exist.
tpu_state() {
  if [ "$QUEUED" = 1 ]; then
    query "$1" "${2:-}" gcloud compute tpus queued-resources describe "$QR_ID" --zone="$ZONE" \
      --format='value(state.state)'
  else
    query "$1" "${2:-}" gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
      --format='value(state)'
  fi
}
