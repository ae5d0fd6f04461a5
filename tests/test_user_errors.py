"""Bad input never trains: every mistake on the documented command lines ends at once with one
`error: ...` line that names the flag, key or path, exit code 2 and no traceback; a
non-finite step stops with exit code 3 before anything from it is saved; a starting point
that does not give the task its encoder stops the run; a damaged checkpoint is reported once.

The table runs `main.py`, `tools.prepare` and `tools.export` as subprocesses, several at a
time (each mistake fails before anything heavy: most in flag parsing or `validate`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
import time
import types

import jax
import numpy as np
import pytest

import train_utils as tu
from uniemox_jax import checkpointing, errors, start, train
from uniemox_jax.models import build
from uniemox_jax.train import finetune, loop as loop_lib, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 30          # what the issue allows each mistake
PARALLEL = 2            # subprocesses at a time (the CI machine has 2 cores)
# Rows that fail in flag parsing, before the package (jax, TFDS, Orbax) is imported: under a
# second each, so they always run. The others import the package and validate (a few
# seconds each), or go as far as the first load (the deepest, ~10 s): marked slow; their
# checks are also made in-process below (`test_validation_catches_...`).
QUICK = {"misspelt_key", "misspelt_group", "key_at_the_wrong_level", "misspelt_config_argument",
         "unknown_dataset_argument", "misspelt_config_file", "misspelt_flag", "missing_workdir",
         "positional_argument", "wrong_type_key", "wrong_type_config_argument",
         "wrong_type_bool", "prepare_unknown_dataset", "prepare_missing_manual_dir",
         "prepare_missing_person_boxes", "prepare_misspelt_flag"}


@dataclasses.dataclass(frozen=True)
class Mistake:
  name: str
  argv: tuple[str, ...]   # after `python`
  needles: tuple[str, ...]  # the first is on the `error:` line itself (the key or path)


@dataclasses.dataclass
class Outcome:
  returncode: int
  stdout: str
  stderr: str
  seconds: float


# ----------------------------------------------------------------------------- fixtures

def _fake_run(workdir: str, params: dict, step: int = 1) -> str:
  """A workdir with one checkpoint of ours holding `params` (what `validate` peeks at)."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(step, {"step": np.int32(step), "params": params,
                   "rng": np.zeros((2,), np.uint32)})
  ckpt.close()
  return workdir


def _damage(step_dir: str) -> None:
  """Truncates the checkpoint's array store (its manifest and data files)."""
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names:
      if name.startswith("manifest") or "/d" in root:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 3)


def _mae_safetensors(path: str, keep=lambda key: True) -> str:
  """A tiny random MAE (`mu`, 32 px) in the official key layout, keys filtered by `keep`."""
  from safetensors.numpy import save_file
  from uniemox_jax.models import convert, mae
  params = mae.init_params(mae.MaskedAutoencoder(variant="mu", image_size=32), seed=7)
  state_dict = convert.params_to_mae_state_dict(jax.device_get(params), image_size=32)
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items() if keep(k)}, path)
  return path


@pytest.fixture(scope="module")
def things(demo_env, tmp_path_factory):
  """Paths the mistakes point at: fake runs of each kind, a damaged workdir, weight files."""
  root = str(tmp_path_factory.mktemp("mistakes"))
  z = np.zeros((2, 2), np.float32)
  out = dict(
      root=root, env=demo_env,
      pre=_fake_run(os.path.join(root, "pre"), {"mae": {"encoder": {"w": z}}, "fusion": {"w": z}}),
      ft=_fake_run(os.path.join(root, "ft"), {"encoder": {"w": z}, "head": {"kernel": z}}),
      damaged=_fake_run(os.path.join(root, "damaged"), {"encoder": {"w": z}}),
      empty=os.path.join(root, "empty"),
      clip_file=os.path.join(root, "clip.safetensors"),
      partial=_mae_safetensors(os.path.join(root, "partial_mae.safetensors"),
                               keep=lambda k: not k.startswith("blocks.")),
  )
  _damage(os.path.join(out["damaged"], "checkpoints", "1"))
  os.makedirs(out["empty"])
  shutil.copy(os.path.join(demo_env.clip, "model.safetensors"), out["clip_file"])
  return out


def _mistakes(t) -> list[Mistake]:
  env, root = t["env"], t["root"]
  tiny = ("--config.model.variant=mu", "--config.model.image_size=32", "--config.batch_size=8",
          f"--config.data.data_dir={env.tfds}")

  def main(name, config, *extra, needles, workdir=None):
    workdir = workdir or os.path.join(root, "work", name)
    return Mistake(name, ("main.py", f"--config={config}", f"--workdir={workdir}", *tiny,
                          *extra), needles)

  pre = lambda name, *extra, needles: main(name, "configs/pretrain.py:demo",
                                           f"--config.teacher.path={env.clip}", *extra,
                                           needles=needles)
  ft = lambda name, *extra, needles, init=t["pre"], **kw: main(
      name, "configs/finetune.py:demo", f"--config.init={init}", *extra, needles=needles, **kw)
  probe = lambda name, *extra, needles: main(name, "configs/linear_probe.py:demo",
                                             f"--config.init={t['pre']}", *extra,
                                             needles=needles)
  nowhere = os.path.join(root, "nowhere")
  prepare = ("-m", "uniemox_jax.tools.prepare")
  export = ("-m", "uniemox_jax.tools.export")
  return [
      # --- misspellings (flag parsing: before main() runs)
      pre("misspelt_key", "--config.optim.lrr=1",
          needles=("--config.optim.lrr", "did you mean --config.optim.lr?")),
      pre("misspelt_group", "--config.modle.variant=B/16",
          needles=("--config.modle.variant", "--config.model.variant")),
      pre("key_at_the_wrong_level", "--config.lr=1e-3", needles=("--config.lr", "--config.optim.lr")),
      main("misspelt_config_argument", "configs/pretrain.py:demoo",
           needles=("configs/pretrain.py:demoo", "did you mean 'demo'")),
      main("unknown_dataset_argument", "configs/finetune.py:emo9",
           needles=("configs/finetune.py:emo9", "'emo8'")),
      main("misspelt_config_file", "configs/pretrian.py:demo",
           needles=("configs/pretrian.py", "'configs/pretrain.py'")),
      pre("misspelt_flag", "--workdri=/tmp/x", needles=("--workdri", "'workdir'")),
      Mistake("missing_workdir", ("main.py", "--config=configs/pretrain.py:demo"),
              ("--workdir is required",)),
      pre("misspelt_task", "--config.task=pretrian", needles=("config.task='pretrian'", "'pretrain'")),
      pre("positional_argument", "demo", needles=("unexpected arguments ['demo']",)),
      # --- wrong types
      pre("wrong_type_key", "--config.batch_size=eight",
          needles=("--config.batch_size=eight", "expected int")),
      main("wrong_type_config_argument", "configs/pretrain.py:demo,mask_ratio=high",
           f"--config.teacher.path={env.clip}", needles=("mask_ratio='high'", "a float")),
      pre("wrong_type_bool", "--config.model.remat=maybe",
          needles=("--config.model.remat=maybe", "expected bool")),
      # --- missing and wrong paths
      ft("missing_data_dir", f"--config.data.data_dir={nowhere}",
         needles=("config.data.data_dir=", "does not exist")),
      ft("data_not_prepared", f"--config.data.data_dir={t['empty']}",
         needles=("config.data.data_dir=", "is not prepared", "uniemox_jax.tools.prepare")),
      pre("missing_teacher", f"--config.teacher.path={nowhere}",
          needles=("config.teacher.path=", "does not exist")),
      pre("teacher_without_clip_files", f"--config.teacher.path={env.tfds}",
          needles=("config.teacher.path=", "holds no CLIP model", "config.json")),
      ft("missing_init", init=f"{nowhere}.pth", needles=("config.init=", "does not exist")),
      ft("init_without_weights", init=t["empty"],
         needles=("config.init=", "holds neither a run of ours")),
      ft("resume_not_a_run", f"--config.resume={t['empty']}",
         needles=("config.resume", "is not a workdir")),
      # --- wrong starting checkpoints, for each task
      ft("finetune_from_the_clip_teacher", init=env.clip,
         needles=("config.init=", "is a CLIP model")),
      ft("finetune_from_a_partial_encoder", init=t["partial"],
         needles=("config.init=", "config.init_allow_partial=True")),
      pre("pretrain_from_a_classifier", f"--config.init={t['ft']}",
          needles=("config.init=", "is a fine-tuned classifier", "pretrain task")),
      pre("pretrain_from_clip_weights", f"--config.init={t['clip_file']}",
          needles=("config.init=", "no parameter matches the pretrain model", "CLIP model")),
      probe("probe_from_a_classifier", f"--config.init={t['ft']}",
            needles=("config.init=", "fine-tuned classifier")),
      probe("probe_from_the_clip_teacher", f"--config.init={env.clip}",
            needles=("config.init=", "is a CLIP model")),
      ft("eval_from_a_pretraining_run", "--config.task=eval",
         needles=("config.init=", "no classification head")),
      ft("workdir_with_only_unreadable_checkpoints", init="",
         needles=("checkpoints", "none could be read", "Move that directory away"),
         workdir=t["damaged"]),
      # --- sizes that do not fit
      ft("batch_larger_than_the_split", "--config.batch_size=512",
         needles=("config.batch_size=512", "at most 24")),
      pre("image_size_not_a_multiple_of_the_patch", "--config.model.image_size=30",
          needles=("config.model.image_size=30", "patch size")),
      pre("mesh_that_does_not_fit", "--config.mesh.fsdp=3", needles=("config.mesh", "devices")),
      # --- the tools
      Mistake("prepare_unknown_dataset", (*prepare, "--dataset=emo9",
                                          f"--manual_dir={env.raw}/benchmarks",
                                          f"--data_dir={root}/tfds"),
              ("--dataset=emo9", "emotion_folder/emo8")),
      Mistake("prepare_missing_manual_dir", (*prepare, "--dataset=emo8", f"--manual_dir={nowhere}",
                                             f"--data_dir={root}/tfds"),
              (nowhere, "does not exist")),
      Mistake("prepare_missing_person_boxes", (*prepare, "--dataset=emoset",
                                               f"--manual_dir={env.raw}/EmoSet",
                                               f"--data_dir={root}/tfds",
                                               f"--person_boxes={nowhere}.json"),
              ("--person_boxes=", "does not exist")),
      Mistake("prepare_misspelt_flag", (*prepare, "--datset=emo8", f"--manual_dir={nowhere}",
                                        f"--data_dir={root}/tfds"),
              ("--datset", "'dataset'")),
      Mistake("export_missing_checkpoint", (*export, f"--checkpoint={nowhere}",
                                            f"--out={root}/x.safetensors"),
              ("--checkpoint=", "does not exist")),
      Mistake("export_from_the_clip_teacher", (*export, f"--checkpoint={env.clip}",
                                               f"--out={root}/x.safetensors"),
              ("--checkpoint=", "is not one of our runs")),
      Mistake("export_to_a_wrong_file_name", (*export, f"--checkpoint={t['ft']}",
                                              f"--out={root}/weights.txt"),
              ("--out=", ".safetensors")),
  ]


# The table's row names, known before the fixtures exist (the paths are placeholders here).
NAMES = [m.name for m in _mistakes(collections.defaultdict(
    str, env=types.SimpleNamespace(tfds="", clip="", raw=""), root=""))]


def _run(argv) -> Outcome:
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  begin = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=3 * TIMEOUT_S)
  except subprocess.TimeoutExpired as e:
    return Outcome(-9, e.stdout or "", e.stderr or "", time.perf_counter() - begin)
  return Outcome(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - begin)


class Runner:
  """Runs the table's rows in parallel subprocesses, a group at a time, when first asked for."""

  def __init__(self, table: list[Mistake]):
    self.table = {m.name: m for m in table}
    self.results: dict[str, Outcome] = {}

  def __call__(self, name: str) -> Outcome:
    if name not in self.results:
      group = [m for m in self.table.values() if (m.name in QUICK) == (name in QUICK)]
      with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        self.results.update(zip([m.name for m in group], pool.map(lambda m: _run(m.argv),
                                                                   group)))
    return self.results[name]


@pytest.fixture(scope="module")
def runner(things):
  return Runner(_mistakes(things))


# ------------------------------------------------------------------------------ the table

def test_the_table_has_every_kind_of_mistake(things):
  names = [m.name for m in _mistakes(things)]
  assert names == NAMES and len(set(names)) == len(names)
  assert len(QUICK) >= 15 and QUICK <= set(names)


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
def test_a_mistake_ends_at_once_with_one_line_naming_it(runner, name):
  mistake, out = runner.table[name], runner(name)
  text = out.stdout + out.stderr
  where = f"{mistake.name}: python {' '.join(mistake.argv)}\n{text[-3000:]}"
  assert out.returncode == errors.EXIT_USER_ERROR, where
  assert "Traceback" not in text, where
  # The run's own time, measured while another runs beside it.
  assert out.seconds < TIMEOUT_S, where
  lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, where
  message = out.stderr[out.stderr.index(lines[0]):]
  assert mistake.needles[0] in lines[0], where
  for needle in mistake.needles[1:]:
    assert needle in message, (needle, where)


def test_nothing_was_trained_or_saved_by_a_mistake(runner, things):
  runner(sorted(QUICK)[0])
  work = os.path.join(things["root"], "work")
  for name in runner.results:
    ckpt_dir = os.path.join(work, name, "checkpoints")
    saved = [n for n in os.listdir(ckpt_dir) if n[0].isdigit()] if os.path.isdir(ckpt_dir) else []
    assert not saved, (name, saved)


def test_validation_catches_wrong_paths_starting_points_and_sizes(demo_env, things):
  """What the slow rows check through main.py, in-process: `validate` stops each mistake
  before anything heavy, with one problem naming the key."""
  e, t = demo_env, things
  cases = [
      (tu.pretrain_config(e, **{"teacher.path": e.tfds}), "config.teacher.path=",
       "holds no CLIP model"),
      (tu.finetune_config(e, init=t["empty"]), "config.init=", "holds neither a run of ours"),
      (tu.finetune_config(e, init=e.clip), "config.init=", "is a CLIP model"),
      (tu.pretrain_config(e, init=t["ft"]), "config.init=", "is a fine-tuned classifier"),
      (tu.probe_config(e, init=t["ft"]), "config.init=", "is a fine-tuned classifier"),
      (tu.probe_config(e, init=e.clip), "config.init=", "is a CLIP model"),
      (tu.finetune_config(e, init=t["pre"], task="eval"), "config.init=",
       "no classification head"),
      (tu.finetune_config(e, init=t["pre"], batch_size=512), "config.batch_size=512",
       "larger than the 24 examples", "at most 24"),
      (tu.finetune_config(e, **{"data.data_dir": t["empty"]}), "config.data.data_dir=",
       "is not prepared"),
      (tu.pretrain_config(e, task="pretrian"), "config.task='pretrian'",
       "(did you mean 'pretrain'?)"),
  ]
  for config, *needles in cases:
    with pytest.raises(validation.ConfigError) as err:
      validation.validate(config, num_devices=1)
    text = str(err.value)
    assert text.startswith(f"invalid config: {needles[0]}"), text  # one problem, named
    for needle in needles[1:]:
      assert needle in text, (needle, text)
  # Right starting points pass: a pre-training run for fine-tuning and probing.
  validation.validate(tu.finetune_config(e, init=t["pre"]), num_devices=1)
  validation.validate(tu.probe_config(e, init=t["pre"]), num_devices=1)


# ------------------------------------------------------------------------------ exit codes

def test_exit_codes_of_run_cli():
  """User error 2, non-finite stop 3, pre-emption 75 (a returned code), a bug 1 with its
  traceback: what `main.py` and the tools exit with."""
  script = textwrap.dedent("""
      import sys
      from uniemox_jax import errors
      kind = sys.argv.pop(1)
      def main(argv):
        if kind == "user":
          raise errors.UserError("config.x='y': expected z; do w")
        if kind == "nan":
          raise errors.NonFiniteError("non-finite loss at step 3")
        if kind == "preempted":
          return errors.EXIT_PREEMPTED
        if kind == "bug":
          raise RuntimeError("a bug")
        return errors.EXIT_OK
      errors.run_cli(main)
      """)
  expected = {"user": (2, "error: config.x='y'"), "nan": (3, "error: non-finite loss"),
              "preempted": (75, ""), "bug": (1, "Traceback"), "done": (0, "")}
  assert {errors.EXIT_USER_ERROR, errors.EXIT_NON_FINITE, errors.EXIT_PREEMPTED} == {2, 3, 75}
  for kind, (code, needle) in expected.items():
    proc = subprocess.run([sys.executable, "-c", script, kind], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == code, (kind, proc.stderr)
    assert needle in proc.stderr, (kind, proc.stderr)
    if kind in ("user", "nan"):
      assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------- starting points

def test_finetuning_from_weights_without_an_encoder_stops(demo_env, tmp_path, things):
  """The CLIP teacher's weight file as `config.init` (a file, so `validate` cannot tell):
  the load finds no encoder and stops, naming what the file holds; nothing is trained."""
  config = tu.finetune_config(demo_env, init=things["clip_file"], total_steps=1)
  with pytest.raises(start.StartingPointError) as err:
    train.run(config, str(tmp_path))
  text = str(err.value)
  assert f"config.init={things['clip_file']!r}" in text
  assert "no parameter matches the finetune model" in text and "CLIP model" in text
  assert "vision_model.*" in text and "pre-trained encoder" in text
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


def _classifier_target(config):
  model = finetune.build_classifier(config)
  return build.abstract_params(model, build.image_batch(model.image_size))


def test_a_partial_encoder_load_stops_unless_allowed(demo_env, things, caplog):
  config = tu.finetune_config(demo_env, init=things["partial"])
  target = _classifier_target(config)
  with caplog.at_level("INFO"):
    with pytest.raises(start.StartingPointError) as err:
      start.load_weights_into(things["partial"], target, target="finetune", config=config)
  text = str(err.value)
  assert "provides 3 of the 27 encoder tensors" in text, text
  assert "config.init_allow_partial=True" in text and "blocks_0" in text
  assert "(encoder: 3 of 27)" in caplog.text  # the load report was printed before stopping
  caplog.clear()
  config.init_allow_partial = True
  with caplog.at_level("INFO"):
    params = start.load_weights_into(things["partial"], target, target="finetune",
                                     config=config)
  assert "(encoder: 3 of 27)" in caplog.text and "would start from random" in caplog.text
  # What the file has is loaded; the rest keeps the model's initial values.
  from safetensors.numpy import load_file
  tensors = load_file(things["partial"])
  np.testing.assert_allclose(np.asarray(params["encoder"]["patch_embed"]["kernel"]),
                             tensors["patch_embed.proj.weight"].transpose(2, 3, 1, 0))


def test_a_full_encoder_load_passes_the_check(demo_env, tmp_path, caplog):
  path = _mae_safetensors(str(tmp_path / "mae.safetensors"))
  config = tu.finetune_config(demo_env, init=path)
  with caplog.at_level("INFO"):
    start.load_weights_into(path, _classifier_target(config), target="finetune", config=config)
  assert "(encoder: 27 of 27)" in caplog.text and "would start from random" not in caplog.text


# --------------------------------------------------------------------------- the NaN guard

def test_nan_guard_trips_on_an_infinite_parameter_norm_before_saving(demo_env, tmp_path):
  """An absurd lr: the first real update makes the parameter norm overflow while that step's
  loss (of the previous parameters) is still finite. The run stops at that step, and the
  checkpoint on disk is the one from before it (finite, resumable)."""
  # Warm-up is 1 step (lr 0 at step 1), so step 2 is the first with the absurd lr.
  config = tu.pretrain_config(demo_env, total_steps=6, **{"optim.lr": 1e30,
                                                          "checkpoint.every_steps": 1})
  with pytest.raises(loop_lib.NonFiniteLoss) as err:
    train.run(config, str(tmp_path))
  text = str(err.value)
  assert "non-finite param_norm at step 2" in text and "param_norm=inf" in text, text
  assert f"the last good checkpoint is step 1 in {tmp_path / 'checkpoints'}" in text
  assert err.value.exit_code == errors.EXIT_NON_FINITE
  assert "\n" not in text
  losses = tu.losses_by_step(tmp_path)
  assert np.isfinite(losses[1])
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [1]
  params, _ = start.read_params(str(tmp_path), prefer_best=False)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_the_guard_covers_every_logged_norm():
  bad = loop_lib.non_finite({"loss": 1.0, "grad_norm": 2.0, "param_norm": float("inf"),
                             "loss_rec": float("nan"), "lr": 1e-3, "teacher_norm": float("nan")})
  assert bad == ["param_norm", "loss_rec", "teacher_norm"]
  assert loop_lib.non_finite({"loss": 1.0, "grad_norm": 1.0, "param_norm": 1.0}) == []


# ------------------------------------------------------------- a damaged latest checkpoint

def _state(n_arrays: int, value: float):
  return {f"w{i}": np.full((32, 32), value + i, np.float32) for i in range(n_arrays)}


def test_a_damaged_latest_checkpoint_gives_one_short_notice(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(40, step))
  _damage(str(tmp_path / "2"))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpointing.abstract_like(_state(40, 0), {f"w{i}": sharding for i in range(40)})
  with caplog.at_level("WARNING"):
    restored = ckpt.restore(abstract)
  assert restored.step == 1
  notices = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
  assert len(notices) == 1, [r.getMessage()[:200] for r in notices]
  text = notices[0].getMessage()
  assert "checkpoint 2" in text and "could not be restored" in text
  assert "restored checkpoint 1 instead" in text and "2.unreadable" in text
  assert len(text.splitlines()) <= 3 and len(text) < 1000 and "tensorstore_spec" not in text
  ckpt.close()


def test_a_damaged_latest_checkpoint_leaves_no_asyncio_noise_on_stderr(tmp_path):
  """Orbax's abandoned reads of a failed restore would print one traceback per array (some
  runs more, some none: hence several restores of a checkpoint with many arrays)."""
  script = textwrap.dedent("""
      import os, sys, jax, numpy as np
      from uniemox_jax import checkpointing
      def _state(n_arrays, value):
        return {f"w{i}": np.full((32, 32), value + i, np.float32) for i in range(n_arrays)}
      def _damage(step_dir):
        for root, _, names in os.walk(os.path.join(step_dir, "state")):
          for name in names:
            if name.startswith("manifest") or "/d" in root:
              path = os.path.join(root, name)
              with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)
      sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      abstract = checkpointing.abstract_like(_state(200, 0),
                                             {f"w{i}": sharding for i in range(200)})
      for attempt in range(4):
        d = os.path.join(sys.argv[1], str(attempt))
        ckpt = checkpointing.Checkpointer(d, keep=3, async_save=False)
        for step in (1, 2):
          ckpt.save(step, _state(200, step))
        _damage(os.path.join(d, "2"))
        assert ckpt.restore(abstract).step == 1
        ckpt.close()
      import gc; gc.collect()
      print("done")
      """)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr, (
      proc.stderr[-3000:])
  assert "never retrieved" not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) <= 4 * 3, proc.stderr  # one notice (≤ 3 lines) per damaged restore
