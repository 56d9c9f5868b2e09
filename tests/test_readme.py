"""The README is the front door: its links resolve, and it lists every lesson and exercise."""

import re
from pathlib import Path

from tools.colab import colab_url

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_relative_links_resolve():
    for target in re.findall(r"\]\(((?!https?://|#)[^)]+)\)", README):
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_every_lesson_and_exercise_is_listed_with_a_colab_badge():
    notebooks = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")) + sorted((ROOT / "exercises").rglob("ex*.ipynb"))
    assert notebooks
    for nb in notebooks:
        rel = nb.relative_to(ROOT).as_posix()
        assert f"]({rel})" in README, f"README does not link {rel}"
        assert colab_url(rel) in README, f"README has no Colab badge for {rel}"


def test_the_two_commands_and_the_instructor_guide():
    for needle in ("make lab", "make test", "make grade SUBMISSIONS=", "make release", "## Instructor guide",
                   "## Troubleshooting", "## Where the ten common mistakes are shown"):
        assert needle in README, needle
    rows = re.findall(r"^\| (\d+) \| [^|]+ \| lesson", README, flags=re.M)
    assert sorted(int(r) for r in rows) == list(range(1, 11)), "each of the ten mistakes needs a row"
