r"""The benchmark table (and the ablation grid) in one command.

  python -m uniemox_jax.tools.suite --init=PRETRAIN_WORKDIR --data_dir=TFDS_DIR \
      --datasets=emo8,fi,emotion6,unbiasedemo,caer_s,heco --seeds=0,1,2 \
      --readouts=finetune,linear_probe,knn,zeroshot --out=DIR [--teacher=CLIP_DIR] \
      [--set key=value ...] [--set finetune:key=value ...]

Every (data set, read-out, seed) is an ordinary run (`uniemox_jax.train.run`) of its config
(`configs/finetune.py:<dataset>`, `configs/linear_probe.py:<dataset>`,
`configs/readout.py:<dataset>,kind=knn|zeroshot`) in its own workdir
`DIR/<dataset>/<readout>/seed<k>`. A run with `done.json` is skipped and an interrupted one
continues from its checkpoint, so the same command resumes the whole suite. kNN and zero-shot
do not depend on the seed (no randomness): they run once, with the first seed. Then
`DIR/results.md`, `DIR/results.csv` and `DIR/results.png` give one row per data set and, per
read-out, the mean ± sample standard deviation over seeds of the test top-1 (at the best val
epoch / setting) and top-3, with the number of test images and the hash of the test split's
example ids (from the runs' `run_info.json`). `DIR/runs.json` lists every run and its numbers.

The ablation grid pre-trains one model per variant first, `DIR/pretrain/<variant>`, then
applies the same read-outs to each (rows: variant × data set):

  --sweep=components   rec, con+sim, con+sim+rec, +nce, nofusion (configs/pretrain.py arguments)
  --sweep=fusion       every fusion of models/fusion.FUSIONS (`model.fusion`)

with `--pretrain_config=configs/pretrain.py[:args]`, `--pretrain_steps=N` (the budget; 0: the
config's) and `--pretrain_data_dir` (default `--data_dir`); `--variants=a,b` runs a subset.

`--set key=value` overrides a key of every read-out config (`--set model.variant=B/16`);
`--set <readout>:key=value` only that read-out's (`finetune`, `linear_probe`, `knn`,
`zeroshot`, or `pretrain` for the sweep's pre-training). Values are Python literals or plain
strings. The zero-shot teacher is `--teacher`, else the pre-training run's own teacher path.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from uniemox_jax import errors

READOUTS = ("finetune", "linear_probe", "knn", "zeroshot")
# The config of each read-out, by file and argument ({dataset} filled in).
READOUT_CONFIGS = {
    "finetune": "finetune.py:{dataset}",
    "linear_probe": "linear_probe.py:{dataset}",
    "knn": "readout.py:{dataset},kind=knn",
    "zeroshot": "readout.py:{dataset},kind=zeroshot",
}
# Read-outs without randomness: one run whatever the seeds.
DETERMINISTIC = ("knn", "zeroshot")
# Table columns: (column name, read-out whose results.json holds it, key prefix).
COLUMNS = (("finetune", "finetune", "test_"), ("linear_probe", "linear_probe", "test_"),
           ("knn", "knn", "test_"), ("zeroshot", "zeroshot", "test_"),
           ("zeroshot_teacher", "zeroshot", "teacher_test_"))


@dataclasses.dataclass(frozen=True)
class Variant:
  """One pre-training variant of an ablation sweep."""
  name: str                  # as shown in the table
  slug: str                  # its directory name
  arg: str = ""              # appended to the pretrain config's argument
  overrides: tuple = ()      # (dotted key, value) pairs


def sweep_variants(sweep: str) -> list[Variant]:
  """The variants of `--sweep=components` or `--sweep=fusion`."""
  if sweep == "components":
    return [Variant("rec", "rec", "components=rec"),
            Variant("con+sim", "con+sim", "components=con+sim"),
            Variant("con+sim+rec", "con+sim+rec", "components=con+sim+rec"),
            Variant("+nce", "con+sim+rec+nce", "components=con+sim+rec+nce"),
            Variant("nofusion", "nofusion", "nofusion")]
  if sweep == "fusion":
    from uniemox_jax.models import fusion  # pylint: disable=g-import-not-at-top
    return [Variant(name, name, "nofusion" if name == "none" else "",
                    () if name == "none" else (("model.fusion", name),))
            for name in fusion.FUSIONS]
  raise ValueError(f"--sweep={sweep!r}: use 'components' or 'fusion' (or leave it empty)")


@dataclasses.dataclass
class Run:
  """One ordinary run of the suite."""
  readout: str               # a READOUTS entry, or 'pretrain'
  dataset: str               # a benchmark name ('' for pre-training)
  seed: int
  variant: str               # '' outside a sweep
  workdir: str
  config: Any

  @property
  def done(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, "done.json"))

  def label(self) -> str:
    parts = [self.variant, self.dataset, self.readout,
             "" if self.readout in DETERMINISTIC + ("pretrain",) else f"seed {self.seed}"]
    return " ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# Configs.


def default_configs_dir() -> str:
  """`<repository>/configs`, next to the package."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "configs")


def load_config(spec: str, configs_dir: str | None = None):
  """The locked ConfigDict of `path[:argument]`; a bare file name is looked up in
  `configs_dir`. The file is loaded by path, as main.py's --config flag loads it."""
  path, colon, arg = spec.partition(":")
  if not os.path.isfile(path) and configs_dir:
    path = os.path.join(configs_dir, os.path.basename(path))
  if not os.path.isfile(path):
    raise errors.UserError(f"config file {spec.partition(':')[0]!r} not found (looked in "
                           f"{configs_dir or '.'}); pass --configs_dir or run from the "
                           "repository root")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # configs import each other as `configs.<name>`
    sys.path.insert(0, root)
  name = f"_uniemox_suite_config_{abs(hash(os.path.abspath(path)))}"
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg if colon else None)
  config.lock()
  return config


def parse_value(text: str):
  """A `--set` value: a Python literal (`3`, `0.5`, `True`, `('a', 'b')`), `true`/`false`, or
  the plain string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_overrides(items: Sequence[str]) -> list[tuple[str | None, str, Any]]:
  """`[readout:]key=value` items → `(readout or None, key, value)`."""
  out = []
  for item in items:
    key, eq, value = item.partition("=")
    if not eq:
      raise errors.UserError(f"--set {item!r}: expected key=value or readout:key=value")
    scope, colon, key = key.partition(":") if ":" in key else ("", "", key)
    if colon and scope not in READOUTS + ("pretrain",):
      raise errors.UserError(f"--set {item!r}: unknown read-out {scope!r}"
                             f"{errors.did_you_mean(scope, READOUTS + ('pretrain',))}; use one "
                             f"of {', '.join(READOUTS + ('pretrain',))}")
    out.append((scope or None, key.strip(), parse_value(value.strip())))
  return out


def set_key(config, dotted: str, value, what: str = "--set") -> None:
  """`config.<dotted> = value` with the existing value's type (ints become floats, strings
  stay strings); an unknown key is an error naming the closest ones."""
  node, parts = config, dotted.split(".")
  for depth, part in enumerate(parts):
    if not hasattr(node, "keys") or part not in node:
      known = list(node.keys()) if hasattr(node, "keys") else []
      raise errors.UserError(f"{what} {dotted}=...: no key {'.'.join(parts[:depth + 1])!r} in "
                             f"the {config.task} config{errors.did_you_mean(part, known)}")
    if depth < len(parts) - 1:
      node = node[part]
  leaf, current = parts[-1], node[parts[-1]]
  if isinstance(current, str) and not isinstance(value, str):
    value = str(value)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[leaf] = value
  except TypeError as e:
    raise errors.UserError(f"{what} {dotted}={value!r}: {e}") from None


# --------------------------------------------------------------------------------------------
# Planning and running.


def teacher_of(init: str) -> str:
  """The teacher path recorded by the pre-training run at `init` ('' if none)."""
  from uniemox_jax.train import readout  # pylint: disable=g-import-not-at-top
  recorded = readout.pretraining_config(init) or {}
  return str(recorded.get("teacher", {}).get("path", "") or "")


def readout_run(readout: str, dataset: str, seed: int, *, init: str, data_dir: str,
                teacher: str, workdir: str, overrides, configs_dir: str | None,
                variant: str = "") -> Run:
  config = load_config(READOUT_CONFIGS[readout].format(dataset=dataset), configs_dir)
  config.init = init
  config.seed = int(seed)
  config.data.data_dir = data_dir
  if readout == "zeroshot" and teacher:
    config.teacher.path = teacher
  for scope, key, value in overrides:
    if scope in (None, readout):
      set_key(config, key, value, f"--set {scope + ':' if scope else ''}")
  return Run(readout, dataset, int(seed), variant, workdir, config)


def plan(*, init: str, data_dir: str, datasets: Sequence[str], seeds: Sequence[int],
         readouts: Sequence[str], out: str, overrides=(), teacher: str = "",
         configs_dir: str | None = None, sweep: str = "", variants: Sequence[str] = (),
         pretrain_config: str = "configs/pretrain.py", pretrain_steps: int = 0,
         pretrain_data_dir: str = "") -> list[Run]:
  """Every run of the suite, in order (pre-training variants first, then their read-outs)."""
  unknown = [r for r in readouts if r not in READOUTS]
  if unknown:
    raise errors.UserError(f"--readouts: unknown {unknown}{errors.did_you_mean(unknown[0], READOUTS)}; "
                           f"use {', '.join(READOUTS)}")
  if not seeds:
    raise errors.UserError("--seeds: give at least one seed")
  runs: list[Run] = []
  starts: list[tuple[str, str, str]] = []   # (variant name, init, teacher)
  if sweep:
    chosen = sweep_variants(sweep)
    if variants:
      names = {v.name for v in chosen} | {v.slug for v in chosen}
      missing = [v for v in variants if v not in names]
      if missing:
        raise errors.UserError(f"--variants: {missing} are not variants of --sweep={sweep} "
                               f"({', '.join(v.name for v in chosen)})")
      chosen = [v for v in chosen if v.name in variants or v.slug in variants]
    base, _, arg = pretrain_config.partition(":")
    for v in chosen:
      spec = base + ":" + ",".join(a for a in (arg, v.arg) if a)
      config = load_config(spec.rstrip(":"), configs_dir)
      config.data.data_dir = pretrain_data_dir or data_dir
      if teacher:
        config.teacher.path = teacher
      if pretrain_steps:
        config.total_steps = int(pretrain_steps)
      for key, value in v.overrides:
        set_key(config, key, value, f"--sweep={sweep}")
      for scope, key, value in overrides:
        if scope == "pretrain":
          set_key(config, key, value, "--set pretrain:")
      workdir = os.path.join(out, "pretrain", v.slug)
      runs.append(Run("pretrain", "", int(config.seed), v.name, workdir, config))
      starts.append((v.name, workdir, teacher or config.teacher.path))
  else:
    if not init:
      raise errors.UserError("--init is required (the pre-trained checkpoint to read out), "
                             "unless --sweep pre-trains the variants itself")
    starts.append(("", init, teacher or teacher_of(init)))
  for variant, start_from, teacher_path in starts:
    vdir = os.path.join(out, next(v.slug for v in sweep_variants(sweep) if v.name == variant)
                        ) if variant else out
    for dataset in datasets:
      for readout in readouts:
        for seed in (seeds[:1] if readout in DETERMINISTIC else seeds):
          runs.append(readout_run(
              readout, dataset, seed, init=start_from, data_dir=data_dir, teacher=teacher_path,
              workdir=os.path.join(vdir, dataset, readout, f"seed{seed}"), overrides=overrides,
              configs_dir=configs_dir, variant=variant))
  return runs


class Stopped(Exception):
  """A run was pre-empted: the suite stops (run the same command again to continue)."""


def execute(runs: Sequence[Run], runner: Callable | None = None,
            echo: Callable[[str], None] = print) -> list[dict]:
  """Runs every run not yet done, in order, with `runner(config, workdir)` (default
  `uniemox_jax.train.run`). Returns `{'label', 'status', 'seconds'}` per run. Raises `Stopped`
  when a run reports it was pre-empted."""
  if runner is None:
    from uniemox_jax import train  # pylint: disable=g-import-not-at-top
    runner = train.run
  log = []
  for i, run in enumerate(runs):
    head = f"[{i + 1}/{len(runs)}] {run.label()}"
    if run.done:
      echo(f"{head}: done before, skipped ({run.workdir})")
      log.append({"label": run.label(), "status": "skipped", "seconds": 0.0})
      continue
    begin = time.perf_counter()
    result = runner(run.config, run.workdir)
    seconds = time.perf_counter() - begin
    status = result.get("status")
    log.append({"label": run.label(), "status": status, "seconds": seconds})
    if status != "done":
      raise Stopped(f"{head}: {status} after {seconds:.0f} s; run the same command again to "
                    "continue")
    top1 = result.get("test_top1")
    echo(f"{head}: done in {seconds:.0f} s" +
         (f", test top-1 {top1:.4f}" if isinstance(top1, float) else ""))
  return log


# --------------------------------------------------------------------------------------------
# The table.


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def collect(runs: Sequence[Run]) -> list[dict]:
  """One row per (variant, data set) from the finished read-out runs' results.json and
  run_info.json: `variant`, `dataset`, `num_test`, `test_sha256`, and per column of `COLUMNS`
  `{col: {'top1': (mean, std), 'top3': (mean, std), 'n': seeds, 'values': [...]}}`."""
  rows: dict[tuple[str, str], dict] = {}
  for run in runs:
    if run.readout == "pretrain" or not run.done:
      continue
    results = _read_json(os.path.join(run.workdir, "results.json"))
    info = _read_json(os.path.join(run.workdir, "run_info.json"))
    test_split = info["config"]["data"]["test_split"]
    row = rows.setdefault((run.variant, run.dataset), {
        "variant": run.variant, "dataset": run.dataset, "num_test": set(), "test_sha256": set(),
        "columns": {}})
    row["num_test"].add(int(results["test_num_examples"]))
    row["test_sha256"].add(info["data"]["splits"][test_split]["ids_sha256"])
    for column, readout, prefix in COLUMNS:
      if readout != run.readout or f"{prefix}top1" not in results:
        continue
      cell = row["columns"].setdefault(column, {"values": []})
      cell["values"].append({"seed": run.seed, "top1": float(results[f"{prefix}top1"]),
                             "top3": float(results[f"{prefix}top3"]), "workdir": run.workdir})
  out = []
  for row in rows.values():
    for cell in row["columns"].values():
      cell["n"] = len(cell["values"])
      for key in ("top1", "top3"):
        cell[key] = mean_std([v[key] for v in cell["values"]])
    row["num_test"] = sorted(row["num_test"])
    row["test_sha256"] = sorted(row["test_sha256"])
    out.append(row)
  return out


def _pct(mean_sd: tuple[float, float], n: int) -> str:
  mean, sd = mean_sd
  return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if n > 1 else "")


def _one(values: list) -> str:
  return "/".join(str(v) for v in values) if len(values) != 1 else str(values[0])


def write_table(rows: Sequence[dict], out: str, title: str = "UniEmoX benchmark") -> dict:
  """Writes `results.md`, `results.csv` and `results.png` under `out`; returns their paths."""
  columns = [c for c, _, _ in COLUMNS if any(c in r["columns"] for r in rows)]
  sweep = any(r["variant"] for r in rows)
  os.makedirs(out, exist_ok=True)
  # ---------------------------------------------------------------- markdown
  head = (["variant"] if sweep else []) + ["data set", "test images", "test split sha256"]
  head += [f"{c} top-1 (top-3)" for c in columns]
  lines = [f"# {title}", "",
           "Test top-1 (top-3) in %, mean ± sample std over seeds (n = number of runs; kNN and "
           "zero-shot do not depend on the seed). Fine-tuning and the linear probe report the "
           "best val epoch, zero-shot the prompt setting with the better val top-1; "
           "`zeroshot_teacher` is the CLIP teacher's own zero-shot on the same images.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = ([r["variant"]] if sweep else []) + [
        r["dataset"], _one(r["num_test"]), _one([h[:12] for h in r["test_sha256"]])]
    for c in columns:
      cell = r["columns"].get(c)
      cells.append("—" if cell is None else
                   f"{_pct(cell['top1'], cell['n'])} ({_pct(cell['top3'], cell['n'])}), "
                   f"n={cell['n']}")
    lines.append("| " + " | ".join(cells) + " |")
  paths = {"md": os.path.join(out, "results.md"), "csv": os.path.join(out, "results.csv"),
           "png": os.path.join(out, "results.png")}
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  # ---------------------------------------------------------------- csv (fractions, full hash)
  fields = ["variant", "dataset", "num_test", "test_sha256"]
  for c in columns:
    fields += [f"{c}_top1_mean", f"{c}_top1_std", f"{c}_top3_mean", f"{c}_top3_std", f"{c}_n"]
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for r in rows:
      row = {"variant": r["variant"], "dataset": r["dataset"], "num_test": _one(r["num_test"]),
             "test_sha256": _one(r["test_sha256"])}
      for c in columns:
        cell = r["columns"].get(c)
        if cell is None:
          continue
        row.update({f"{c}_top1_mean": cell["top1"][0], f"{c}_top1_std": cell["top1"][1],
                    f"{c}_top3_mean": cell["top3"][0], f"{c}_top3_std": cell["top3"][1],
                    f"{c}_n": cell["n"]})
      writer.writerow(row)
  plot_table(rows, columns, paths["png"], title)
  return paths


# --------------------------------------------------------------------------------------------
# The plot (PIL only).

PALETTE = ((66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 105, 189), (150, 150, 150))


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def plot_table(rows: Sequence[dict], columns: Sequence[str], path: str, title: str) -> None:
  """Grouped bars: one group per row (variant / data set), one bar per read-out, height the
  mean test top-1, whiskers ± one std, the value printed above."""
  bar, gap, left, top, bottom, plot_h = 26, 30, 70, 70, 90, 360
  group = max(1, len(columns)) * bar
  width = max(left + len(rows) * (group + gap) + gap, 520)
  height = top + plot_h + bottom
  img = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(img)
  f_title, f_text, f_small = _font(18), _font(13), _font(11)
  draw.text((left, 12), title, fill="black", font=f_title)
  draw.text((left, 38), "test top-1, mean ± std over seeds", fill="black", font=f_text)
  y0 = top + plot_h
  for t in range(6):
    v = t / 5
    y = y0 - v * plot_h
    draw.line([left, y, width - 10, y], fill=(225, 225, 225))
    draw.text((left - 34, y - 7), f"{v:.1f}", fill="black", font=f_small)
  draw.line([left, top, left, y0], fill="black")
  draw.line([left, y0, width - 10, y0], fill="black")
  for g, r in enumerate(rows):
    x_group = left + gap + g * (group + gap)
    for j, c in enumerate(columns):
      cell = r["columns"].get(c)
      if cell is None:
        continue
      mean, sd = cell["top1"]
      x = x_group + j * bar
      color = PALETTE[j % len(PALETTE)]
      draw.rectangle([x + 2, y0 - mean * plot_h, x + bar - 2, y0], fill=color)
      if cell["n"] > 1 and sd > 0:
        cx = x + bar / 2
        lo, hi = y0 - max(mean - sd, 0) * plot_h, y0 - min(mean + sd, 1) * plot_h
        draw.line([cx, lo, cx, hi], fill="black", width=1)
        draw.line([cx - 4, hi, cx + 4, hi], fill="black")
        draw.line([cx - 4, lo, cx + 4, lo], fill="black")
      text = f"{100 * mean:.0f}"
      tw = draw.textbbox((0, 0), text, font=f_small)[2]
      draw.text((x + bar / 2 - tw / 2, y0 - min(mean + sd, 1) * plot_h - 14), text,
                fill="black", font=f_small)
    name = "/".join(p for p in (r["variant"], r["dataset"]) if p)
    tw = draw.textbbox((0, 0), name, font=f_text)[2]
    draw.text((x_group + group / 2 - tw / 2, y0 + 8), name, fill="black", font=f_text)
  lx = left
  for j, c in enumerate(columns):
    draw.rectangle([lx, height - 30, lx + 14, height - 16], fill=PALETTE[j % len(PALETTE)])
    draw.text((lx + 20, height - 31), c, fill="black", font=f_text)
    lx += 30 + draw.textbbox((0, 0), c, font=f_text)[2]
  img.save(path)


# --------------------------------------------------------------------------------------------
# Command line.

@dataclasses.dataclass
class SuiteArgs:
  """The suite's options (the command-line flags of the same names)."""
  data_dir: str
  out: str
  init: str = ""
  datasets: Sequence[str] = ("emo8",)
  seeds: Sequence[int] = (0,)
  readouts: Sequence[str] = READOUTS
  set: Sequence[str] = ()
  teacher: str = ""
  configs_dir: str | None = None
  sweep: str = ""
  variants: Sequence[str] = ()
  pretrain_config: str = "configs/pretrain.py"
  pretrain_steps: int = 0
  pretrain_data_dir: str = ""


def _define_flags() -> None:
  flags.DEFINE_string("init", "", "The pre-trained checkpoint every read-out starts from (a "
                      "pre-training workdir or an official UniEmoX / MAE file); not with "
                      "--sweep.")
  flags.DEFINE_string("data_dir", None, "TFDS directory with the prepared benchmarks.")
  flags.DEFINE_list("datasets", ["emo8"], "Benchmarks: emo8, fi, emotion6, unbiasedemo, "
                    "caer_s, heco.")
  flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) of the seeded read-outs.")
  flags.DEFINE_list("readouts", list(READOUTS), "Read-outs: " + ", ".join(READOUTS) + ".")
  flags.DEFINE_string("out", None, "Directory for the runs and the tables.")
  flags.DEFINE_multi_string("set", [], "[readout:]key=value overriding a config key.")
  flags.DEFINE_string("teacher", "", "CLIP directory for zero-shot (default: the "
                      "pre-training run's teacher).")
  flags.DEFINE_string("configs_dir", None, "Where the config files are (default: the "
                      "repository's configs/).")
  flags.DEFINE_enum("sweep", "", ["", "components", "fusion"], "Pre-train and read out an "
                    "ablation grid.")
  flags.DEFINE_list("variants", [], "With --sweep: only these variants.")
  flags.DEFINE_string("pretrain_config", "configs/pretrain.py", "With --sweep: the "
                      "pre-training config (path[:args]); each variant's argument is appended.")
  flags.DEFINE_integer("pretrain_steps", 0, "With --sweep: pre-training steps per variant "
                       "(0: the config's).")
  flags.DEFINE_string("pretrain_data_dir", "", "With --sweep: TFDS directory with EmoSet "
                      "(default --data_dir).")


def run_suite(f: SuiteArgs, runner: Callable | None = None,
              echo: Callable[[str], None] = print) -> dict:
  """The whole suite: plan, validate every config, run what is not done, tabulate. Returns
  `{'runs', 'rows', 'paths'}`."""
  configs_dir = f.configs_dir or default_configs_dir()
  runs = plan(init=f.init, data_dir=f.data_dir, datasets=f.datasets,
              seeds=[int(s) for s in f.seeds], readouts=list(f.readouts), out=f.out,
              overrides=parse_overrides(f.set), teacher=f.teacher, configs_dir=configs_dir,
              sweep=f.sweep, variants=f.variants, pretrain_config=f.pretrain_config,
              pretrain_steps=f.pretrain_steps, pretrain_data_dir=f.pretrain_data_dir)
  from uniemox_jax.train import validation  # pylint: disable=g-import-not-at-top
  for run in runs:  # every config's keys and values, before the first long run
    validation.validate(run.config, check_paths=False)
  os.makedirs(f.out, exist_ok=True)
  with open(os.path.join(f.out, "suite.json"), "w") as fh:
    json.dump({"argv": sys.argv, "runs": [
        {"readout": r.readout, "dataset": r.dataset, "seed": r.seed, "variant": r.variant,
         "workdir": r.workdir} for r in runs]}, fh, indent=1)
  log = execute(runs, runner, echo)
  rows = collect(runs)
  title = f"UniEmoX {'ablation: ' + f.sweep if f.sweep else 'benchmark'}"
  paths = write_table(rows, f.out, title)
  with open(os.path.join(f.out, "runs.json"), "w") as fh:
    json.dump({"log": log, "rows": rows}, fh, indent=1, default=str)
  echo(f"wrote {paths['md']}, {paths['csv']}, {paths['png']}")
  return {"runs": runs, "rows": rows, "paths": paths}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  for name in ("data_dir", "out"):
    if not f[name].value:
      raise app.UsageError(f"--{name} is required")
  args = SuiteArgs(**{field.name: f[field.name].value
                      for field in dataclasses.fields(SuiteArgs)})
  args.seeds = [int(s) for s in args.seeds]
  try:
    run_suite(args)
  except Stopped as e:
    logging.warning("%s", e)
    return errors.EXIT_PREEMPTED
  return errors.EXIT_OK


if __name__ == "__main__":
  _define_flags()
  from uniemox_jax import train as _train  # pylint: disable=g-import-not-at-top
  errors.run_cli(main, user_errors=_train.UserError)
