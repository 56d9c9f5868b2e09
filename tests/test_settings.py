"""The per-scale settings table (preflab.settings): every lesson that trains or evaluates a policy
reads its numbers from it, none hard-codes a learning rate, and the GPT-2 column follows its rule."""

import ast
import json
import re
from pathlib import Path

import pytest

from preflab.settings import GPT2_MEASURED, LR_RATIO, TINY, lesson_settings

LESSONS = sorted((Path(__file__).resolve().parent.parent / "lessons").glob("[0-9][0-9]_*.ipynb"))
#: What makes a lesson's numbers scale-dependent: it trains something or draws held-out prompts.
SCALED = re.compile(r"\b(train_\w+|heldout_prompts)\(")
LR_NAMES = {"lr", "LR", "learning_rate", "ppo_lr", "rm_lr"}


def _literal_learning_rates(code: str) -> list[str]:
    """Learning rates written as numbers: lr=3e-4 in a call, LR = 1e-3 (alone or in a tuple), "lr": 1e-3."""
    tree = ast.parse("\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!"))))
    number = lambda n: isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in LR_NAMES and number(node.value):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                found += [f"{ast.unparse(t)} = {ast.unparse(v)}" for t, v in pairs
                          if isinstance(t, ast.Name) and t.id in LR_NAMES and number(v)]
        elif isinstance(node, ast.Dict):
            found += [f"{k.value!r}: {ast.unparse(v)}" for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value in LR_NAMES and number(v)]
    return found


def _code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells[1:] if c["cell_type"] == "code")  # cell 0: Colab setup


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_each_lesson_reads_its_row_and_hard_codes_no_learning_rate(path):
    number, code = path.name[:2], _code(path)
    assert not _literal_learning_rates(code), \
        f"{path.name} writes learning rates as numbers ({_literal_learning_rates(code)}): take them from preflab.settings"
    if not SCALED.search(code):
        assert number not in TINY, f"{path.name} trains nothing and evaluates no policy, but has a settings row"
        return
    assert f'lesson_settings("{number}")' in code, f"{path.name} trains or evaluates but does not read its settings row"
    used = set(re.findall(r"\bS\.([a-z_]+)", code))
    assert used <= set(TINY[number]), f"{path.name} reads settings its row lacks: {used - set(TINY[number])}"
    assert set(TINY[number]) <= used, f"lesson {number}'s row has values its lesson never reads: {set(TINY[number]) - used}"


def test_the_gpt2_column_divides_learning_rates_and_keeps_sizes():
    for lesson, row in TINY.items():
        tiny, gpt2 = lesson_settings(lesson, "tiny"), lesson_settings(lesson, "gpt2")
        assert dict(tiny.values) == row
        for key, value in row.items():
            if key in GPT2_MEASURED.get(lesson, {}):
                assert getattr(gpt2, key) == GPT2_MEASURED[lesson][key]
            elif key.endswith("lr"):
                assert getattr(gpt2, key) == pytest.approx(value / LR_RATIO, rel=1e-12)
                assert 5e-7 <= getattr(gpt2, key) <= 1e-4, f"lesson {lesson} {key}: outside GPT-2 finetuning's usual range"
            else:
                assert getattr(gpt2, key) == value and isinstance(value, int), (lesson, key)


def test_the_scale_comes_from_the_environment_and_str_says_where_each_value_came_from(monkeypatch):
    monkeypatch.setenv("PREFLAB_SCALE", "gpt2")
    s = lesson_settings("07")
    assert s.scale == "gpt2" and s.lr == pytest.approx(3e-4 / LR_RATIO)
    assert "lr=1.5e-05 (tiny 0.0003 / 20)" in str(s) and "eval_prompts=192 (as tiny)" in str(s)
    monkeypatch.delenv("PREFLAB_SCALE")
    assert lesson_settings("07").scale == "tiny" and "(as tiny)" not in str(lesson_settings("07"))


def test_measured_gpt2_values_replace_derived_ones(monkeypatch):
    monkeypatch.setitem(GPT2_MEASURED, "07", {"lr": 2e-6})
    s = lesson_settings("07", "gpt2")
    assert s.lr == 2e-6 and "measured on a GPU" in str(s)
    assert lesson_settings("07", "tiny").lr == 3e-4


def test_mistakes_get_errors_that_name_them():
    with pytest.raises(KeyError, match="no settings for lesson '99'"):
        lesson_settings("99")
    with pytest.raises(AttributeError, match="lesson 07 has no setting 'learning_rate'.*dpo_steps"):
        lesson_settings("07").learning_rate
    with pytest.raises(AttributeError, match="read-only"):
        lesson_settings("07").lr = 1.0
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        lesson_settings("07", "huge")


def test_the_literal_learning_rate_finder_finds_them():
    """The check above can fail: each way a lesson wrote a learning rate before the table is caught."""
    code = 'STEPS, BATCH, LR = 150, 32, 1e-3\ncfg = DPOConfig(beta=0.1, lr=3e-4)\nbase = {"lr": 1e-4}\n%env X=1\nBETA, LR = 0.5, S.lr'
    assert sorted(_literal_learning_rates(code)) == ["'lr': 0.0001", "LR = 0.001", "lr=0.0003"]
