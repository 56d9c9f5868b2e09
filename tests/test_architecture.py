"""The library's structure as docs/ARCHITECTURE.md states it: no import cycle, imports at the top,
no course tooling in preflab/, one pattern for every trainer, each public function tagged with the
lesson that teaches it."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "preflab"
MODULES = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
#: Imports kept inside a function on purpose: the exercises' check module (selfcheck -> wire) loads
#: in numpy-only notebooks, so torch and the model classes are imported only when a model crosses.
LAZY_OK = {("wire", "preflab.reward_model")}
TOOLING = ("nbclient", "nbconvert", "nbformat", "nbgrader", "psutil", "jupyter_client", "playwright")


def _tree(mod: str) -> ast.Module:
    return ast.parse((LIB / f"{mod}.py").read_text())


def _preflab_imports(node) -> list[str]:
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("preflab"):
            out.append(n.module if n.module != "preflab" else f"preflab.{n.names[0].name}")
        elif isinstance(n, ast.Import):
            out += [a.name for a in n.names if a.name.startswith("preflab")]
    return out


def test_no_import_cycle():
    graph = {m: {i.split(".")[1] for i in _preflab_imports(_tree(m)) if i.count(".") >= 1} - {m} for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            visit(d, path + [m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])


def test_library_imports_sit_at_the_top():
    for mod in MODULES:
        tree = _tree(mod)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for imp in _preflab_imports(node):
                    if imp.startswith("preflab.") and (mod, imp) not in LAZY_OK and "import preflab.world" not in imp:
                        assert False, f"preflab/{mod}.py imports {imp} inside {node.name}: import it at the top"


def test_no_course_tooling_in_the_library():
    for mod in MODULES:
        for n in ast.walk(_tree(mod)):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                ([n.module] if isinstance(n, ast.ImportFrom) and n.module else [])
            for name in names:
                assert not name.split(".")[0] in TOOLING, f"preflab/{mod}.py imports {name}: course tooling lives in tools/"


TRAINERS = [("preflab.pretrain", "train_lm", "PretrainConfig"), ("preflab.sft", "train_sft", "SFTConfig"), ("preflab.reward_model", "train_reward_model", "RewardConfig"),
            ("preflab.dpo", "train_dpo", "DPOConfig"), ("preflab.ppo", "train_ppo", "PPOConfig"),
            ("preflab.grpo", "train_grpo", "GRPOConfig"), ("preflab.kto", "train_kto", "KTOConfig"),
            ("preflab.orpo", "train_orpo", "ORPOConfig"), ("preflab.online_dpo", "train_online_dpo", "OnlineDPOConfig")]


@pytest.mark.parametrize("module,fn,config", TRAINERS)
def test_every_trainer_follows_the_one_pattern(module, fn, config):
    import importlib

    m = importlib.import_module(module)
    sig = inspect.signature(getattr(m, fn))
    names = list(sig.parameters)
    assert "cfg" in names and names[-1] == "callback", names
    assert sig.parameters["callback"].default is None
    cfg_cls = getattr(m, config)
    src = inspect.getsource(cfg_cls)
    tree = ast.parse(src).body[0]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    body = tree.body
    for k, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and node.target.id in fields:
            nxt = body[k + 1] if k + 1 < len(body) else None
            assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str), \
                f"{config}.{node.target.id} has no one-line docstring under it"
    assert "progress" in fields and "seed" in fields


def test_every_public_function_names_its_lesson():
    for mod in MODULES:
        for node in _tree(mod).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node) or ""
                assert "esson" in doc or "course infrastructure" in doc, f"preflab.{mod}.{node.name}: no lesson tag"
