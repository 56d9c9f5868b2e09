"""Merge: the instructor's course gradebook, nbgrader's own, so formgrader works on it.

``OUT/course`` is an nbgrader course folder: ``gradebook.db``, ``source/`` and ``release/`` (from
solutions/), ``submitted/`` and ``autograded/`` (the kept submission of each student and
exercise) and an ``nbgrader_config.py``. ``make formgrader OUT=…`` opens nbgrader's formgrader on
it, where the instructor grades the written answers (and may override any score); ``make export``
or the next ``make grade`` writes ``grades.csv`` with those manual points merged.

A rerun never overwrites a manual grade: the merge writes only auto scores and auto comments.
If a student's written answer changed since it was graded by hand, the manual score stays and
the answer is marked for review again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .report import write_private

COURSE_ID = "preflab"

CONFIG = '''# nbgrader configuration of this graded course (written by `make grade`).
# Open formgrader here with `make formgrader OUT=...` (or `jupyter lab` from this folder).
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = {course!r}
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.db_url = {db!r}
c.Exchange.root = {exchange!r}
'''


class CourseMismatch(RuntimeError):
    """OUT's gradebook was made from other solutions."""


@dataclass
class Manual:
    """What the gradebook holds for one submission beyond the autograder's scores."""

    total: float | None
    """nbgrader's score of every cell (a manual score where one was given, else the auto score);
    None when the submission is not in the gradebook."""
    written: float | None
    """Manual points of the written answers, None while one still awaits grading."""
    pending: list[str]
    """Grade ids of written answers that await a person."""
    overridden: list[str]
    """Grade ids of code cells whose score a person overrode."""


def _written_sources(nb_text: str) -> dict[str, str]:
    try:
        nb = json.loads(nb_text)
    except (ValueError, TypeError):
        return {}
    out = {}
    for c in nb.get("cells", []):
        g = (c.get("metadata") or {}).get("nbgrader") or {}
        if g.get("grade") and g.get("solution") and c.get("cell_type") == "markdown":
            src = c.get("source", "")
            out[g["grade_id"]] = "".join(src) if isinstance(src, list) else src
    return out


class Course:
    def __init__(self, root: Path):
        self.root = root
        self.db_url = f"sqlite:///{root / 'gradebook.db'}"

    @classmethod
    def open(cls, root: Path, template: Path, template_hash: str, fresh: bool = False) -> "Course":
        """The course folder at ``root``, made from ``template`` if it does not exist yet."""
        root = root.resolve()
        stamp = root / ".template"
        if root.exists() and fresh:
            shutil.rmtree(root)
        if (root / "gradebook.db").exists():
            made = stamp.read_text().strip() if stamp.exists() else "?"
            if made != template_hash:
                raise CourseMismatch(
                    f"{root} holds a gradebook made from other solutions (template {made}, now {template_hash}): "
                    "grade into a new OUT, or pass --fresh to start the gradebook again (manual grades in it are lost)")
            return cls(root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        shutil.copy2(template / "gradebook.db", root / "gradebook.db")
        for sub in ("source", "release"):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
            shutil.copytree(template / sub, root / sub)
        (root / "exchange").mkdir(exist_ok=True)
        write_private(root / "nbgrader_config.py", CONFIG.format(root=str(root), course=COURSE_ID, db=f"sqlite:///{root / 'gradebook.db'}",
                                                                 exchange=str(root / "exchange")))
        write_private(stamp, template_hash + "\n")
        return cls(root)

    def _paths(self, student: str, aid: str) -> tuple[Path, Path]:
        return (self.root / "submitted" / student / aid / f"{aid}.ipynb",
                self.root / "autograded" / student / aid / f"{aid}.ipynb")

    def record(self, student: str, aid: str, grades: dict, comments: dict, submitted: str, autograded: str) -> bool:
        """Store a kept result: auto scores and comments, never a manual score. Returns True when
        a hand-graded written answer changed and is marked for review again."""
        from nbgrader.api import Gradebook

        sub_path, graded_path = self._paths(student, aid)
        old = _written_sources(graded_path.read_text()) if graded_path.exists() else {}
        new = _written_sources(autograded)
        review = False
        with Gradebook(self.db_url, COURSE_ID) as gb:
            gb.update_or_create_student(student)
            gb.update_or_create_submission(aid, student)
            nb = gb.find_submission_notebook(aid, aid, student)
            for g in nb.grades:
                g.auto_score = grades.get(g.name)
                if g.cell.cell_type == "code":
                    g.needs_manual_grade = False
                else:
                    changed = g.name in old and old.get(g.name) != new.get(g.name)
                    if changed and g.manual_score is not None:
                        review = True
                    g.needs_manual_grade = g.auto_score is None and (g.manual_score is None or changed)
            for c in nb.comments:
                c.auto_comment = comments.get(c.name)
            gb.db.commit()
        write_private(sub_path, submitted)
        write_private(graded_path, autograded)
        return review

    def manual(self, student: str, aid: str) -> Manual:
        from nbgrader.api import Gradebook, MissingEntry

        with Gradebook(self.db_url, COURSE_ID) as gb:
            try:
                nb = gb.find_submission_notebook(aid, aid, student)
            except MissingEntry:
                return Manual(total=None, written=None, pending=[], overridden=[])
            total, written, pending, overridden = 0.0, 0.0, [], []
            for g in nb.grades:
                total += float(g.score or 0.0)
                if g.cell.cell_type == "code":
                    if g.manual_score is not None:
                        overridden.append(g.name)
                    continue
                if g.auto_score is None and g.manual_score is None:
                    pending.append(g.name)
                elif g.needs_manual_grade and g.manual_score is not None:
                    pending.append(g.name)
                written += float(g.score or 0.0)
            return Manual(total=total, written=None if pending else written, pending=pending, overridden=overridden)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
