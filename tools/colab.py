"""Colab support: the course's repository address (the one place it lives) and the first cell.

Every lesson and exercise starts with the cell that :func:`setup_cell_source` returns. On
Colab it clones the course, installs it, and picks the ``gpt2`` scale when a GPU is present;
anywhere else it does nothing. ``python -m tools.colab`` rewrites that cell in every
notebook from this file, and a test checks that they agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: The course's public repository. Change it here, then run ``python -m tools.colab``.
REPO_URL = "https://github.com/preflab-course/preflab"
REPO_BRANCH = "main"
#: Notebook folders whose first cell this module writes.
NOTEBOOK_DIRS = ("lessons", "solutions")  # exercises/ is generated from solutions/ by `make release`

SETUP_MARKER = "# preflab-setup"


def setup_cell_source() -> str:
    """The source of every notebook's first cell (a no-op outside Colab)."""
    return f'''{SETUP_MARKER}: on Colab this cell clones and installs the course and picks the GPT-2
# scale when a GPU is attached. Anywhere else it does nothing.
import os, subprocess, sys
if "google.colab" in sys.modules:
    if not os.path.isdir("/content/preflab"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "-b", "{REPO_BRANCH}",
                        "{REPO_URL}", "/content/preflab"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/preflab"], check=True)
    sys.path.insert(0, "/content/preflab")
    import torch
    os.environ.setdefault("PREFLAB_SCALE", "gpt2" if torch.cuda.is_available() else "tiny")
    print("preflab installed; scale:", os.environ["PREFLAB_SCALE"])'''


def colab_url(notebook_path: str) -> str:
    """The 'Open in Colab' address of a notebook in the repository (path relative to its root)."""
    repo = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/{REPO_BRANCH}/{notebook_path}"


def sync_setup_cells(root: str | Path = ".") -> list[Path]:
    """Rewrite the first (setup) cell of every notebook under ``NOTEBOOK_DIRS``; return the changed files."""
    changed = []
    for folder in NOTEBOOK_DIRS:
        for path in sorted(p for p in Path(root, folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts):
            nb = json.loads(path.read_text())
            cells = nb["cells"]
            src = setup_cell_source()
            if cells and "".join(cells[0].get("source", "")).startswith(SETUP_MARKER):
                if "".join(cells[0]["source"]) == src:
                    continue
                cells[0]["source"] = src
            else:
                cells.insert(0, {"cell_type": "code", "execution_count": None, "id": "preflab-setup",
                                 "metadata": {"tags": ["setup"]}, "outputs": [], "source": src})
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    return changed


if __name__ == "__main__":
    for p in sync_setup_cells(sys.argv[1] if len(sys.argv) > 1 else "."):
        print("updated", p)
