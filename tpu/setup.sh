#!/usr/bin/env bash
# Installs the project on every worker of the TPU VM (run tpu/create.sh first). The code
# comes from REPO_URL (cloned; REPO_REF checked out) or, with REPO_URL unset, from this
# checkout, copied to every worker without .git, virtual environments or outputs. Each
# worker gets REMOTE_DIR/.venv (Python PYTHON_VERSION, made with uv) with requirements.txt
# and jax[tpu]; then every worker starts JAX at once and prints the devices it sees.
# Running it again updates the code and installs what requirements.txt added.
# Usage: TPU_NAME=uniemox ZONE=us-central2-b [REPO_URL=<your git URL> [REPO_REF=<branch, tag
#          or commit>]] bash tpu/setup.sh [--flag=value ...]
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_settings "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected arguments: ${ARGS[*]} (settings are --name=value flags)"
require TPU_NAME ZONE

dir=$(quote "$REMOTE_DIR")
# uv makes the virtual environment with its own Python when the image's is older (Ubuntu
# 22.04's python3 is 3.10; our jax needs 3.11 or later).
install="cd $dir && python3 -m pip install --user --quiet --upgrade uv"
install+=" && { [ -x .venv/bin/python ] || python3 -m uv venv --quiet --python $(quote "$PYTHON_VERSION") .venv; }"
install+=" && python3 -m uv pip install --quiet --python .venv/bin/python -r requirements.txt 'jax[tpu]'"

if [ -n "${REPO_URL:-}" ]; then
  code="{ [ -d $dir/.git ] || git clone --quiet $(quote "$REPO_URL") $dir; }"
  if [ -n "${REPO_REF:-}" ]; then
    code+=" && git -C $dir fetch --quiet origin $(quote "$REPO_REF") && git -C $dir checkout --quiet --detach FETCH_HEAD"
  else
    code+=" && git -C $dir pull --quiet --ff-only"
  fi
  say "installing $REPO_URL${REPO_REF:+ at $REPO_REF} on every worker of $TPU_NAME"
else
  say "copying $REPO_DIR to every worker of $TPU_NAME"
  if dry; then
    archive=${TMPDIR:-/tmp}/uniemox-jax-src.tar.gz
  else
    archive=$(mktemp "${TMPDIR:-/tmp}/uniemox-jax-src.XXXXXX")
    trap 'rm -f "$archive"' EXIT
  fi
  run tar -czf "$archive" -C "$REPO_DIR" --exclude=.git '--exclude=.venv*' --exclude=__pycache__ \
    --exclude=.pytest_cache --exclude=workdirs --exclude=demo_out '--exclude=*.egg-info' \
    --exclude=.whl .
  gc compute tpus tpu-vm scp "$archive" "$TPU_NAME:uniemox-jax-src.tar.gz" --zone="$ZONE" --worker=all
  # A fresh copy (files deleted here go there too), keeping the virtual environment.
  code="mkdir -p $dir && find $dir -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +"
  code+=" && tar -xzf uniemox-jax-src.tar.gz -C $dir && rm uniemox-jax-src.tar.gz"
fi
tpu_ssh all "$code && $install"

# On a slice JAX starts on all hosts together, as main.py --distributed will.
check='import jax; jax.distributed.initialize(); print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of {jax.device_count()} {jax.devices()[0].device_kind} devices")'
tpu_ssh all "cd $dir && .venv/bin/python -c $(quote "$check")"
say "installed in $REMOTE_DIR (under the home directory) on every worker of $TPU_NAME"
