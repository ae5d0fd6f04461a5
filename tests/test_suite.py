"""The benchmark suite on two demo look-alike benchmarks: every run, the table against the runs'
results.json, resuming, the command line, and the ablation sweep."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
from PIL import Image

import train_utils as tu
from uniemox_jax import train
from uniemox_jax.data import builders, demo
from uniemox_jax.models import fusion
from uniemox_jax.tools import suite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ["emo8", "emotion6"]
TINY = ["model.variant=mu", "model.image_size=32", "model.dtype=float32", "batch_size=8",
        "data.num_workers=0", "data.eval_resize=37", "eval.batch_size=8",
        "finetune:total_steps=2", "finetune:total_epochs=2", "finetune:warmup_epochs=1",
        "finetune:optim.lr=0.001", "finetune:log.every_steps=1",
        "linear_probe:total_epochs=2", "linear_probe:optim.lr=0.003"]
PRETRAIN_TINY = ["pretrain:model.variant=mu", "pretrain:model.image_size=32",
                 "pretrain:model.dtype=float32", "pretrain:batch_size=8",
                 "pretrain:data.num_workers=0", "pretrain:checkpoint.every_steps=0",
                 "pretrain:log.every_steps=1"]


def _text(*parts) -> str:
  with open(os.path.join(*parts)) as f:
    return f.read()


@pytest.fixture(scope="module")
def benchmarks(demo_env, tmp_path_factory):
  """emo8 (the demo's) and an emotion6 look-alike, prepared together in one TFDS dir."""
  root = str(tmp_path_factory.mktemp("suite_data"))
  tfds_dir = os.path.join(root, "tfds")
  demo.write_benchmark(os.path.join(root, "raw"), "emotion6", seed=1, per_class=(2, 1, 1),
                       image_size=(48, 40))
  builders.prepare("emotion_folder/emotion6", os.path.join(root, "raw"), tfds_dir)
  builders.prepare("emotion_folder/emo8", os.path.join(demo_env.raw, "benchmarks"), tfds_dir)
  return tfds_dir


@pytest.fixture(scope="module")
def pretrained(demo_env, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("suite_pretrain"))
  train.run(tu.pretrain_config(demo_env, total_steps=2), work)
  return work


@pytest.fixture(scope="module")
def table(benchmarks, pretrained, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("suite_out"))
  args = suite.SuiteArgs(data_dir=benchmarks, out=out, init=pretrained, datasets=DATASETS,
                         seeds=[0, 1], set=TINY)
  lines = []
  outcome = suite.run_suite(args, echo=lines.append)
  return args, outcome, lines


def test_every_run_is_an_ordinary_run_in_its_own_workdir(table):
  args, outcome, lines = table
  runs = outcome["runs"]
  # Seeded read-outs twice, kNN and zero-shot (no randomness) once, per data set.
  assert sorted((r.dataset, r.readout, r.seed) for r in runs) == sorted(
      [(d, r, s) for d in DATASETS for r in ("finetune", "linear_probe") for s in (0, 1)]
      + [(d, r, 0) for d in DATASETS for r in ("knn", "zeroshot")])
  for r in runs:
    assert r.workdir == os.path.join(args.out, r.dataset, r.readout, f"seed{r.seed}")
    assert r.done and tu.read_json(r.workdir, "run_info.json")["config"]["seed"] == r.seed
  assert len(lines) == len(runs) + 1 and all("done in" in line for line in lines[:-1])
  # The zero-shot teacher came from the pre-training run's record.
  zs = next(r for r in runs if r.readout == "zeroshot")
  assert zs.config.teacher.path == tu.read_json(args.init, "run_info.json")["config"][
      "teacher"]["path"]


def _expected(runs, dataset, readout, prefix="test_"):
  values = [tu.read_json(r.workdir, "results.json") for r in runs
            if r.dataset == dataset and r.readout == readout]
  out = {}
  for key in ("top1", "top3"):
    xs = [v[f"{prefix}{key}"] for v in values]
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    out[key] = (mean, sd)
  return out, len(values)


def test_the_table_equals_the_runs_results(table):
  args, outcome, _ = table
  runs = outcome["runs"]
  with open(os.path.join(args.out, "results.csv")) as f:
    rows = {r["dataset"]: r for r in csv.DictReader(f)}
  assert sorted(rows) == sorted(DATASETS)
  markdown = _text(args.out, "results.md")
  for dataset in DATASETS:
    row = rows[dataset]
    test_run = next(r for r in runs if r.dataset == dataset and r.readout == "knn")
    info = tu.read_json(test_run.workdir, "run_info.json")
    assert row["test_sha256"] == info["data"]["splits"]["test"]["ids_sha256"]
    assert int(row["num_test"]) == tu.read_json(test_run.workdir, "results.json")[
        "test_num_examples"] == (8 if dataset == "emo8" else 6)
    for column, readout, prefix in suite.COLUMNS:
      expected, n = _expected(runs, dataset, readout, prefix)
      assert int(row[f"{column}_n"]) == n == (1 if readout in suite.DETERMINISTIC else 2)
      for key in ("top1", "top3"):
        assert float(row[f"{column}_{key}_mean"]) == pytest.approx(expected[key][0])
        assert float(row[f"{column}_{key}_std"]) == pytest.approx(expected[key][1])
      text = f"{100 * expected['top1'][0]:.1f}"
      if n > 1:
        text += f" ± {100 * expected['top1'][1]:.1f}"
      assert text in markdown
    assert f"| {dataset} | {row['num_test']} | {row['test_sha256'][:12]} |" in markdown
  assert Image.open(os.path.join(args.out, "results.png")).size[0] >= 520


def test_a_second_run_skips_finished_runs_and_continues_a_killed_one(table):
  args, outcome, _ = table
  before = _text(args.out, "results.csv")
  victim = next(r for r in outcome["runs"] if r.readout == "finetune" and r.seed == 1)
  os.remove(os.path.join(victim.workdir, "done.json"))  # as if killed after its last save
  called = []

  def runner(config, workdir):
    called.append(workdir)
    return train.run(config, workdir)

  again = suite.run_suite(args, runner=runner, echo=lambda line: None)
  assert called == [victim.workdir]
  log = [json.loads(line) for line in _text(victim.workdir, "metrics.jsonl").splitlines()]
  assert not any("train/loss" in row for row in log[-3:])  # resumed at its end: no new steps
  assert _text(args.out, "results.csv") == before
  assert again["rows"] == outcome["rows"]


def test_the_command_line_writes_the_same_table(table):
  args, _, _ = table
  before = _text(args.out, "results.csv")
  cmd = [sys.executable, "-m", "uniemox_jax.tools.suite", f"--init={args.init}",
         f"--data_dir={args.data_dir}", f"--datasets={','.join(DATASETS)}", "--seeds=0,1",
         "--readouts=finetune,linear_probe,knn,zeroshot", f"--out={args.out}",
         *[f"--set={s}" for s in TINY]]
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("done before, skipped") == 12
  assert _text(args.out, "results.csv") == before
  bad = subprocess.run(cmd[:-len(TINY)] + ["--set=model.varient=mu"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "varient" in bad.stderr and "Traceback" not in bad.stderr


def test_overrides_are_typed_and_scoped():
  assert suite.parse_overrides(["a.b=3", "finetune:c=0.5", "d=true", "e=hello", "f=(1, 2)"]) == [
      (None, "a.b", 3), ("finetune", "c", 0.5), (None, "d", True), (None, "e", "hello"),
      (None, "f", (1, 2))]
  with pytest.raises(Exception, match="unknown read-out 'finetun'"):
    suite.parse_overrides(["finetun:total_steps=1"])
  config = suite.load_config("readout.py:emo8,kind=knn", suite.default_configs_dir())
  suite.set_key(config, "knn.temperature", 1)
  assert config.knn.temperature == 1.0 and isinstance(config.knn.temperature, float)
  with pytest.raises(Exception, match="knn.kk"):
    suite.set_key(config, "knn.kk", 3)


def test_the_fusion_sweep_covers_every_fusion():
  variants = suite.sweep_variants("fusion")
  assert [v.name for v in variants] == list(fusion.FUSIONS)
  runs = suite.plan(init="", data_dir="/nowhere", datasets=["emo8"], seeds=[0],
                    readouts=["knn"], out="/tmp/x", sweep="fusion", variants=["prior", "none"],
                    configs_dir=suite.default_configs_dir())
  pre = [r for r in runs if r.readout == "pretrain"]
  assert [r.config.model.fusion for r in pre] == ["prior", "none"]
  assert [r.workdir for r in runs if r.readout == "knn"] == [
      "/tmp/x/prior/emo8/knn/seed0", "/tmp/x/none/emo8/knn/seed0"]
  assert [v.name for v in suite.sweep_variants("components")] == [
      "rec", "con+sim", "con+sim+rec", "+nce", "nofusion"]


def test_the_components_sweep_pretrains_each_variant_and_reads_it_out(benchmarks, demo_env,
                                                                       tmp_path):
  out = str(tmp_path / "sweep")
  args = suite.SuiteArgs(
      data_dir=benchmarks, out=out, datasets=["emo8"], seeds=[0], readouts=["knn", "zeroshot"],
      set=TINY + PRETRAIN_TINY, teacher=demo_env.clip, sweep="components",
      variants=["rec", "nofusion"], pretrain_config="configs/pretrain.py:demo",
      pretrain_steps=1, pretrain_data_dir=demo_env.tfds)
  outcome = suite.run_suite(args, echo=lambda line: None)
  pre = {r.variant: r for r in outcome["runs"] if r.readout == "pretrain"}
  assert tu.read_json(pre["rec"].workdir, "run_info.json")["config"]["loss"] == {
      **tu.read_json(pre["rec"].workdir, "run_info.json")["config"]["loss"],
      "con": 0.0, "sim": 0.0, "rec": 1.0}
  assert tu.read_json(pre["nofusion"].workdir, "run_info.json")["config"]["model"][
      "fusion"] == "none"
  assert sorted(tu.losses_by_step(pre["rec"].workdir)) == [1]
  zs = tu.read_json(out, "nofusion", "emo8", "zeroshot", "seed0", "results.json")
  assert zs["fusion"] == "none"  # γ = α, the checkpoint's own fusion ('auto')
  with open(os.path.join(out, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["variant"], r["dataset"]) for r in rows] == [("rec", "emo8"), ("nofusion", "emo8")]
  for r in rows:
    res = tu.read_json(out, r["variant"], "emo8", "knn", "seed0", "results.json")
    assert float(r["knn_top1_mean"]) == pytest.approx(res["test_top1"])
  assert "| rec | emo8 |" in _text(out, "results.md")
