"""Colab support: the course's repository address (the one place it lives) and the first cell.

Every lesson and exercise starts with the cell that :func:`setup_cell_source` returns. On
Colab it clones the course and installs it without replacing any package the runtime already
has; anywhere else it does nothing. ``python -m tools.colab`` rewrites that cell in every
notebook from this file, and a test checks that they agree (``tests/test_colab_sim.py`` runs the
cell in a simulated Colab).

How the cell installs, and why: Colab ships torch (built for its CUDA), numpy, transformers and
ipywidgets 7.7 (the version its front end renders). A plain ``pip install -e`` replaces any of
them that a requirement does not accept, and an upgraded torch or ipywidgets breaks the runtime
until a restart, or for good. So the cell writes a constraints file that pins every distribution
already installed to its installed version and runs ``pip install -e <clone> -c <that file>``:
pip's resolver (default strategy ``only-if-needed``) still installs what is missing, and when
the course cannot work with a preinstalled version pip stops with a conflict instead of
replacing it, and the cell says so. (``--no-deps`` plus installing the missing packages by hand
would re-implement the resolver and silently skip version checks.)

The cell is idempotent: it writes a marker into the clone only after pip succeeded, so running
it again is a no-op that says so, and a clone or an install that failed is retried. Every
failure prints what to do. Settings, all environment variables (``%env NAME=value`` in a cell
above it):

* ``PREFLAB_SCALE``: ``tiny`` (the default, also on a GPU: the lessons' claims are checked at the
  tiny scale only) or ``gpt2`` (the real GPT-2, 124 M).
* ``PREFLAB_CACHE``: where the GPT-2 finetune is cached (:func:`preflab.model.load_gpt2_sft`); a
  path under ``/content/drive/MyDrive`` mounts Google Drive, so the finetune survives into the
  next notebook.
* ``PREFLAB_REPO_URL`` and ``PREFLAB_HOME``: the clone's source (default :data:`REPO_URL`) and
  target (default ``/content/preflab``), for forks and for the simulated-Colab test.
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
#: The file, inside the clone, that says the install finished.
INSTALLED_MARKER = ".preflab-installed"
#: The constraints file, inside the clone, that pins what the runtime had installed.
CONSTRAINTS_FILE = ".preflab-constraints.txt"

_CELL = '''# preflab-setup: on Colab this cell downloads and installs the course, once per runtime (running
# it again is safe), and keeps the packages Colab ships. Anywhere else it does nothing.
# Options, each set in a cell above this one before running it:
#   %env PREFLAB_SCALE=gpt2   the real GPT-2 (124M) on the GPU instead of the tiny model
#   %env PREFLAB_CACHE=/content/drive/MyDrive/preflab-cache   keep the GPT-2 finetune on Google
#                             Drive, so that the next notebook does not finetune it again
import os, sys
if "google.colab" in sys.modules:
    def _preflab_setup():
        import importlib.metadata, re, shutil, subprocess
        url = os.environ.get("PREFLAB_REPO_URL", "@REPO_URL@")
        home = os.environ.get("PREFLAB_HOME", "/content/preflab")
        marker, pins = os.path.join(home, "@INSTALLED@"), os.path.join(home, "@CONSTRAINTS@")

        class PreflabSetupError(Exception):
            def _render_traceback_(self):  # IPython shows this line instead of a traceback
                return ["PreflabSetupError: " + str(self) + " (see the advice above)"]

        def fail(what, output, check, by_hand, retry=True):
            print(f"preflab setup: {what}.")
            output = re.sub(r"\\x1b\\[[0-9;]*m", "", output or "")  # no terminal colours
            lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
            errors = [ln for ln in lines if re.search(r"ERROR|error:|fatal:|depends on|requested", ln)]
            for line in list(dict.fromkeys(errors))[-8:] or lines[-8:]:
                print("    " + line)
            if retry:
                check += (", then run this cell again (it retries only what failed).\\nIf it fails again: "
                          "Runtime > Restart session and run this cell again, or run by hand, in a new cell:")
            print(f"What to do: {check}\\n    {by_hand}")
            raise PreflabSetupError(what)

        if os.path.isfile(marker):
            print(f"preflab is already installed in {home}: nothing to do.")
        else:
            if os.path.isdir(home) and not os.path.isfile(os.path.join(home, "pyproject.toml")):
                if os.listdir(home) and not os.path.isdir(os.path.join(home, ".git")):
                    fail(f"{home} exists but holds no copy of the course", "",
                         "move or delete that folder (or set PREFLAB_HOME to another one)", f"!rm -r {home}")
                shutil.rmtree(home)  # a clone that stopped half-way
            if not os.path.isdir(home):
                print(f"preflab setup: downloading the course from {url} ...")
                clone = ["git", "clone", "-q", "--depth", "1", "-b", "@REPO_BRANCH@", url, home]
                try:
                    r = subprocess.run(clone, capture_output=True, text=True)
                    output = r.stderr if r.returncode else None
                except OSError as e:
                    output = str(e)
                if output is not None:
                    shutil.rmtree(home, ignore_errors=True)
                    fail(f"could not download the course from {url}", output,
                         "check that this runtime is online (in a new cell, !curl -sI https://github.com "
                         "should print HTTP/2 200)", "!" + " ".join(clone))
            # Pin every package the runtime has to its installed version: pip adds what is missing
            # and replaces nothing (Colab's torch, numpy, transformers, ipywidgets stay as they are).
            try:
                from packaging.version import Version
            except ImportError:
                from pip._vendor.packaging.version import Version
            pinned = {}
            for dist in importlib.metadata.distributions():
                name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
                try:
                    Version(dist.version)
                except Exception:
                    continue  # a version pip could not read; leave it unpinned
                if name and name != "preflab":
                    pinned.setdefault(name, f"{name}=={dist.version}")
            with open(pins, "w") as f:
                f.write("\\n".join(sorted(pinned.values())) + "\\n")
            print("preflab setup: installing the course (about a minute) ...")
            install = [sys.executable, "-m", "pip", "install", "-e", home, "-c", pins]  # not -q: pip explains conflicts at info level
            r = subprocess.run(install, capture_output=True, text=True, env=dict(os.environ, PIP_NO_COLOR="1"))
            if r.returncode:
                if "ResolutionImpossible" in r.stdout + r.stderr:
                    fail("the course asks for a version of a package that differs from the one this runtime "
                         "has, and this cell does not replace Colab's packages", r.stdout + r.stderr,
                         "please report the lines above to the course (its bug, not yours). To go on meanwhile, "
                         "install it replacing that package, then Runtime > Restart session and run this cell "
                         "again. In a new cell:", f"!pip install -e {home}", retry=False)
                fail("installing the course failed", r.stdout + r.stderr,
                     "check that this runtime is online (pip downloads from pypi.org)",
                     f"!pip install -e {home} -c {pins}")
            commit = subprocess.run(["git", "-C", home, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            with open(marker, "w") as f:
                f.write(commit + "\\n")
            print(f"preflab installed in {home} (commit {commit or 'unknown'}); Colab's packages kept.")
        if home not in sys.path:
            sys.path.insert(0, home)  # the editable install is seen by new kernels only

        cache = os.environ.get("PREFLAB_CACHE", "")
        if "/MyDrive" in cache:
            mountpoint = cache.split("/MyDrive")[0]
            if not os.path.isdir(os.path.join(mountpoint, "MyDrive")):
                try:
                    from google.colab import drive
                    drive.mount(mountpoint)
                except Exception as e:
                    print(f"preflab setup: Google Drive did not mount ({e.__class__.__name__}: {e}); the GPT-2 "
                          "finetune is cached on this runtime only. Run this cell again to retry.")
                    os.environ.pop("PREFLAB_CACHE", None)
                    cache = ""
        if cache:
            os.makedirs(cache, exist_ok=True)
        import torch
        scale = os.environ.setdefault("PREFLAB_SCALE", "tiny")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"preflab ready: scale {scale} on {device}.")
        if scale == "tiny":
            print("  For the real GPT-2 (124M): run %env PREFLAB_SCALE=gpt2 in a new cell, then this notebook's "
                  "cells again.\\n  The lessons' claims are asserted at the tiny scale; at gpt2 scale a check "
                  "cell reports them with their numbers, unasserted.")
            if cache:
                print(f"  GPT-2 finetunes will be cached in {cache}.")
        else:
            if device == "cpu":
                print("  No GPU attached: Runtime > Change runtime type > a GPU (T4), or %env PREFLAB_SCALE=tiny.")
            print("  The first GPT-2 load adapts it to the world's text (300 steps), then finetunes it on "
                  "demonstrations (400 steps: 19 s on an H200, longer on a T4), and caches both in "
                  + (cache or "~/.cache/preflab, on this runtime only") + ".")
            if not cache:
                print("  To keep it for the next notebooks: %env PREFLAB_CACHE=/content/drive/MyDrive/preflab-cache, "
                      "then run this cell again.")
    _preflab_setup()
    del _preflab_setup'''


def setup_cell_source() -> str:
    """The source of every notebook's first cell (a no-op outside Colab)."""
    return (_CELL.replace("@REPO_URL@", REPO_URL).replace("@REPO_BRANCH@", REPO_BRANCH)
            .replace("@INSTALLED@", INSTALLED_MARKER).replace("@CONSTRAINTS@", CONSTRAINTS_FILE))


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
