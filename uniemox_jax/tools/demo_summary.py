r"""The embedded demo's table: every read-out of every starting point, from the runs'
`results.json` (what `demo.sh` runs; README "Quick start").

  python -m uniemox_jax.tools.demo_summary --dir=demo_out

Rows are read-outs on the emo8 look-alike's test split (8 classes, chance 0.125), columns
the starting points: a random initialisation, MAE-only pre-training (L_rec), UniEmoX
pre-training, and the teacher itself. Writes `DIR/summary.md` and `DIR/summary.json` and
prints the table. A run that is missing shows as "—" (and is named in the JSON).
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import app
from absl import flags

COLUMNS = (("random", "random init"), ("mae", "MAE only (L_rec)"),
           ("uniemox", "UniEmoX"), ("teacher", "teacher"))
ROWS = (("zeroshot", "zero-shot top-1"), ("knn", "kNN top-1 (CLS)"),
        ("linear_probe", "linear probe top-1 (CLS)"), ("finetune", "fine-tune top-1 (8 labels/class)"))


def _read(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def collect(demo_dir: str) -> dict[str, Any]:
  """`{'cells': {row: {column: top-1 or None}}, 'missing': [...], 'teacher_training': ...}`."""
  cells: dict[str, dict[str, float | None]] = {r: {} for r, _ in ROWS}
  missing = []
  for init, _ in COLUMNS[:3]:
    for readout, _ in ROWS:
      path = os.path.join(demo_dir, "readouts", init, readout, "results.json")
      result = _read(path)
      if result is None:
        missing.append(path)
      cells[readout][init] = None if result is None else float(result["test_top1"])
  # The teacher: its own zero-shot on the same split (from the UniEmoX zero-shot run).
  uni_zs = _read(os.path.join(demo_dir, "readouts", "uniemox", "zeroshot", "results.json"))
  for readout, _ in ROWS:
    cells[readout]["teacher"] = None
  if uni_zs is not None and "teacher_test_top1" in uni_zs:
    cells["zeroshot"]["teacher"] = float(uni_zs["teacher_test_top1"])
  examples = None
  ft = _read(os.path.join(demo_dir, "readouts", "uniemox", "finetune", "results.json"))
  if ft is not None:
    examples = ft.get("test_num_examples")
  return {"cells": cells, "missing": missing, "test_examples": examples, "chance": 0.125,
          "teacher_zeroshot_tool": _read(os.path.join(demo_dir, "tiny_clip", "zeroshot.json"))}


def table(summary: dict[str, Any]) -> str:
  """The Markdown table of `collect`'s cells."""
  fmt = lambda v: "—" if v is None else f"{v:.3f}"
  lines = ["| read-out | " + " | ".join(name for _, name in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
  for row, name in ROWS:
    lines.append(f"| {name} | " + " | ".join(fmt(summary["cells"][row][c]) for c, _ in COLUMNS)
                 + " |")
  n = summary.get("test_examples")
  lines.append("")
  lines.append(f"emo8 look-alike test split{f' ({n} images)' if n else ''}, 8 classes, "
               f"chance {summary['chance']:.3f}.")
  return "\n".join(lines)


def write(demo_dir: str) -> dict[str, Any]:
  summary = collect(demo_dir)
  summary["table_markdown"] = table(summary)
  with open(os.path.join(demo_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(demo_dir, "summary.md"), "w") as f:
    f.write(summary["table_markdown"] + "\n")
  return summary


def main(argv):
  del argv
  summary = write(flags.FLAGS.dir)
  print(summary["table_markdown"])
  for path in summary["missing"]:
    print(f"missing: {path}")


if __name__ == "__main__":
  flags.DEFINE_string("dir", "demo_out", "The demo's output directory (demo.sh's DIR).")
  app.run(main)
