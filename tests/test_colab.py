"""The notebook in colabs/ runs top to bottom (its Colab-only install cell skipped)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "colabs")) if f.endswith(".ipynb"))

# IPython is not a dependency: a stand-in for the one display helper the notebook uses.
PRELUDE = """
import sys, types
display_mod = types.ModuleType("IPython.display")
display_mod.Image = lambda filename: open(filename, "rb").read()
display_mod.display = lambda obj: print(f"<displayed {len(obj)} bytes>")
sys.modules["IPython"] = types.ModuleType("IPython")
sys.modules["IPython.display"] = display_mod
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
  with open(os.path.join(REPO, "colabs", name)) as f:
    notebook = json.load(f)
  cells = [c for c in notebook["cells"] if c["cell_type"] == "code"
           and "colab-only" not in c["metadata"].get("tags", [])]
  source = PRELUDE + "\n\n".join("".join(c["source"]) for c in cells)
  assert "!" not in "".join(line[:1] for c in cells for line in c["source"])  # no shell magics
  script = tmp_path / "notebook.py"
  script.write_text(source)
  env = dict(os.environ, NOTEBOOK_OUT=str(tmp_path / "out"), NOTEBOOK_STEPS="10",
             HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "test top-1" in proc.stdout and "→" in proc.stdout and "<displayed" in proc.stdout
