"""Every notebook in colabs/ executes top to bottom in a Jupyter kernel (nbclient), at tiny
sizes set by a cell injected after its `parameters` cell (as papermill does)."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = sorted(f for f in os.listdir(COLABS) if f.endswith(".ipynb"))

# Small configs for the runs inside the notebooks: the `mu` model at 32 px, float32.
TINY_FINETUNE = {"model.image_size": 32, "model.dtype": "float32", "data.eval_resize": 37,
                 "batch_size": 8, "eval.batch_size": 8, "data.num_workers": 0,
                 "log.every_steps": 1}
TINY_PRETRAIN = {"model.image_size": 32, "model.dtype": "float32", "batch_size": 8,
                 "data.num_workers": 0, "checkpoint.every_steps": 0}


def _parameters(name, tmp_path, demo_env):
  out = str(tmp_path / "out")
  if name == "uniemox_demo.ipynb":
    return {"OUT": out, "STEPS": 10}
  if name == "finetune.ipynb":
    return {"OUT": out, "FOLDER": os.path.join(demo_env.raw, "benchmarks"), "STEPS": 4,
            "OVERRIDES": TINY_FINETUNE, "N_SHOW": 2,
            "CLASSES": ["amusement", "anger", "awe", "contentment", "disgust", "excitement",
                        "fear", "sadness"]}
  if name == "inspect.ipynb":
    return {"OUT": out, "STEPS": 2, "OVERRIDES": TINY_PRETRAIN, "N_IMAGES": 3}
  raise AssertionError(f"no test parameters for {name}: add them here")


def _execute(name, parameters):
  import nbformat
  from nbclient import NotebookClient
  notebook = nbformat.read(os.path.join(COLABS, name), as_version=4)
  tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
  source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
  notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
      source, metadata={"tags": ["injected-parameters"]}))
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": COLABS}})
  client.execute()
  return notebook


def _outputs(notebook):
  text, images = [], 0
  for cell in notebook.cells:
    for out in cell.get("outputs", []):
      if out.get("output_type") == "stream":
        text.append(out["text"])
      data = out.get("data", {})
      text.append(data.get("text/plain", ""))
      images += "image/png" in data
  return "".join(text), images


def test_notebooks_hold_no_shell_magics_and_name_no_repository():
  import nbformat
  for name in NOTEBOOKS:
    notebook = nbformat.read(os.path.join(COLABS, name), as_version=4)
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert not any(line.lstrip().startswith(("!", "%")) for src in code
                   for line in src.splitlines()), name
    assert "github.com" not in "".join(code), name  # install from the checkout or REPO_URL
    assert any("REPO_URL" in src for src in code), name


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, demo_env):
  notebook = _execute(name, _parameters(name, tmp_path, demo_env))
  text, images = _outputs(notebook)
  assert "code from " + REPO in text  # the checkout the notebook sits in, nothing cloned
  if name == "uniemox_demo.ipynb":
    assert "test top-1" in text and "→" in text and images >= 1
  elif name == "finetune.ipynb":
    assert "test top-1" in text and "exported classifier mu" in text
    assert text.count("→") == 2 and text.count("| export:") == 2
    assert images >= 2 + 2  # curves, confusion matrix, two attention figures
    assert os.path.isfile(tmp_path / "out" / "export" / "model.json")
  elif name == "inspect.ipynb":
    assert "removed patches per image: [12. 12. 12.]" in text
    assert "own caption:" in text and text.count("   +") + text.count("   -") == 3 * 3
    assert images == 3  # the views, the masks + reconstructions, the attention maps


def test_a_notebook_outside_a_checkout_asks_for_repo_url(tmp_path):
  """The install cell: no checkout above the notebook and no REPO_URL → a clear error."""
  import nbformat
  from nbclient import NotebookClient
  from nbclient.exceptions import CellExecutionError
  notebook = nbformat.read(os.path.join(COLABS, "finetune.ipynb"), as_version=4)
  keep = [c for c in notebook.cells if c.cell_type == "code" and
          {"parameters", "install"} & set(c.metadata.get("tags", []))]
  assert len(keep) == 2
  notebook.cells = keep
  client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  with pytest.raises(CellExecutionError, match="set REPO_URL|Set REPO_URL"):
    client.execute()
