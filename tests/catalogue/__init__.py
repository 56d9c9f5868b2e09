"""A catalogue of plausible mistakes and correct variants, one module per exercise.

Each module ``exNN.py`` defines:

* ``EXERCISE``: the exercise id (the folder name under solutions/);
* ``DEPENDS``: answer cell grade id -> the test cells whose score may depend on it (a test cell
  that calls the function directly, or through another graded function of the solution);
* ``ENTRIES``: a list of dicts, each with ``cell`` (the answer cell's grade id), ``kind``
  (``"mistake"`` or ``"correct"``), ``name`` (what the variant does), ``source`` (the whole
  replacement source of that answer cell) and optionally ``tags`` (for correct variants:
  ``"float32"``, ``"stderr"`` (warns), ``"loops"``, ``"vectorized"``, ``"numpy"``, ``"torch"``...)
  and ``solo`` (grade it in a notebook of its own).

``tests/test_catalogue.py`` grades every variant with the real grader (``python -m
autograder.grade``) and asserts that every mistake loses points, that no correct variant loses
any, and that the visible checks alone catch at least three quarters of the mistakes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("mistake", "correct")


def load(name: str):
    """The catalogue module of one exercise (``"ex09"``)."""
    spec = importlib.util.spec_from_file_location(f"catalogue_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def all_modules() -> dict:
    """{"ex01": module, ..., "extra_grpo": module} for every catalogue file (the optional extras too)."""
    files = sorted(HERE.glob("ex[0-9][0-9].py")) + sorted(HERE.glob("extra_*.py"))
    return {p.stem: load(p.stem) for p in files}
