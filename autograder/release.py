"""Regenerate exercises/ from solutions/ with nbgrader (``make release``).

    python -m autograder.release            write exercises/<id>/<id>.ipynb for every solutions/<id>/
    python -m autograder.release --check    exit 1 (and list the differences) when exercises/ drifted

nbgrader runs in a scratch course folder (its own gradebook), so a release never touches the
instructor's gradebook; the same function builds the grading template (autograder/grade.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
CONFIG_FILE = Path(__file__).with_name("nbgrader_config.py")
EXERCISE_RE = re.compile(r"^ex(\d\d)_[a-z0-9_]+$")
#: Optional extra exercises (``extra_<topic>``): released like the ten, graded only on request.
EXTRA_RE = re.compile(r"^extra_[a-z0-9_]+$")

log = logging.getLogger("autograder")


def _is_exercise(name: str) -> bool:
    return bool(EXERCISE_RE.match(name) or EXTRA_RE.match(name))


def exercise_ids(solutions: Path = SOLUTIONS, extras: bool = False) -> list[str]:
    """The exercise (= nbgrader assignment = notebook) ids, in order: the ten ``exNN_…``, then,
    with ``extras``, the optional ``extra_…`` ones."""
    def found(rx):
        return sorted(p.name for p in solutions.iterdir()
                      if p.is_dir() and rx.match(p.name) and (p / f"{p.name}.ipynb").exists())

    return found(EXERCISE_RE) + (found(EXTRA_RE) if extras else [])


def load_config(root: Path):
    """nbgrader_config.py, with the course root moved to ``root`` (source/, release/, gradebook.db)."""
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent)).load_config()
    over = Config()
    over.CourseDirectory.root = str(root)
    over.CourseDirectory.source_directory = "source"
    over.CourseDirectory.release_directory = "release"
    over.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    over.Exchange.root = str(root / "exchange")  # unused; keeps nbgrader from warning about it
    (root / "exchange").mkdir(parents=True, exist_ok=True)
    over.Application.log_level = "WARNING"
    cfg.merge(over)
    return cfg


def make_api(cfg):
    # nbgrader runs the `alembic` command when it creates a gradebook: find the venv's copy
    # even when the venv is not activated (make calls .venv/bin/python directly).
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    api = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
    # nbgrader's console handler prints every step; keep only what capture_log collects.
    for h in list(api.log.handlers):
        api.log.removeHandler(h)
    api.log.propagate = False
    api.log.setLevel(logging.INFO)
    return api


def generate(dest: Path, solutions: Path = SOLUTIONS, ids: list[str] | None = None) -> Path:
    """Run nbgrader generate_assignment for every exercise into the course folder ``dest``.

    Returns ``dest / "release"``; ``dest / "gradebook.db"`` then holds the assignments.
    """
    dest = Path(dest)
    ids = ids or exercise_ids(solutions, extras=True)
    (dest / "source").mkdir(parents=True, exist_ok=True)
    for aid in ids:
        target = dest / "source" / aid
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        shutil.copy2(solutions / aid / f"{aid}.ipynb", target / f"{aid}.ipynb")
    api = make_api(load_config(dest))
    for aid in ids:
        res = api.generate_assignment(aid, force=True, create=True)
        if not res.get("success"):
            raise RuntimeError(f"nbgrader generate_assignment {aid} failed:\n{res.get('error') or res.get('log')}")
    return dest / "release"


def comparable(nb: dict) -> list[tuple]:
    """What must match between a released notebook and nbgrader's output: cell types,
    sources and nbgrader metadata. Outputs, execution counts, ids and other metadata are
    volatile and ignored."""
    out = []
    for c in nb.get("cells", []):
        src = c.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        meta = c.get("metadata", {}).get("nbgrader")
        out.append((c.get("cell_type"), src, json.dumps(meta, sort_keys=True)))
    return out


def differences(generated: Path, exercises: Path = EXERCISES, ids: list[str] | None = None) -> list[str]:
    problems = []
    ids = ids or exercise_ids(extras=True)
    for aid in ids:
        g = generated / aid / f"{aid}.ipynb"
        e = exercises / aid / f"{aid}.ipynb"
        if not e.exists():
            problems.append(f"{e.relative_to(REPO) if e.is_relative_to(REPO) else e}: missing")
            continue
        a, b = comparable(json.loads(g.read_text())), comparable(json.loads(e.read_text()))
        if len(a) != len(b):
            problems.append(f"{aid}: {len(b)} cells, nbgrader would generate {len(a)}")
            continue
        for k, (x, y) in enumerate(zip(a, b)):
            if x != y:
                what = "type" if x[0] != y[0] else ("source" if x[1] != y[1] else "nbgrader metadata")
                problems.append(f"{aid}: cell {k} differs in {what}")
        for c in json.loads(e.read_text()).get("cells", []):
            if c.get("outputs") or c.get("execution_count"):
                problems.append(f"{aid}: committed with outputs")
                break
    present = sorted(p.name for p in exercises.iterdir() if p.is_dir() and _is_exercise(p.name)) if exercises.exists() else []
    for name in set(present) - set(ids):
        problems.append(f"exercises/{name}: no matching solutions/{name}")
    return problems


def write_release(generated: Path, exercises: Path = EXERCISES, ids: list[str] | None = None) -> None:
    ids = ids or exercise_ids(extras=True)
    exercises.mkdir(exist_ok=True)
    for aid in ids:
        nb = json.loads((generated / aid / f"{aid}.ipynb").read_text())
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                c["outputs"] = []
                c["execution_count"] = None
        dst = exercises / aid
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir()
        (dst / f"{aid}.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    for p in exercises.iterdir():
        if p.is_dir() and _is_exercise(p.name) and p.name not in ids:
            shutil.rmtree(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autograder.release", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare exercises/ with what nbgrader would generate")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="preflab-release-") as tmp:
        generated = generate(Path(tmp))
        if args.check:
            problems = differences(generated)
            for p in problems:
                print("drift:", p)
            if problems:
                print("exercises/ is out of date: run `make release` and commit the result.")
                return 1
            print(f"exercises/ matches solutions/ ({len(exercise_ids(extras=True))} exercises).")
            return 0
        write_release(generated)
    print(f"released {len(exercise_ids(extras=True))} exercises into {EXERCISES.relative_to(REPO)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
