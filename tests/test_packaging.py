"""Set-up files agree: environment.yml parses and installs what pyproject.toml names; every
notebook starts with the Colab setup cell from tools.colab."""

import json
import re
import tomllib
from pathlib import Path

import yaml

from tools.colab import NOTEBOOK_DIRS, SETUP_MARKER, setup_cell_source

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python") for d in deps if isinstance(d, str))
    assert "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip, "environment.yml must install the package itself"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    course = project["dependencies"] + project["optional-dependencies"]["lessons"] + project["optional-dependencies"]["lab"]
    wanted = {_name(r) for r in course}
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert wanted == listed, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    # same version constraints, requirement by requirement
    spec = {_name(r): r.replace(" ", "") for r in course}
    for r in pip:
        if not r.startswith("-e"):
            assert r.replace(" ", "") == spec[_name(r)], r


def test_torch_is_pinned_in_the_install_path_and_a_range_in_the_package():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"TORCH_SPEC \?= torch==\d+\.\d+\.\d+", make)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if _name(d) == "torch")
    assert ">=" in torch_req and "==" not in torch_req


def test_every_notebook_starts_with_the_setup_cell():
    src = setup_cell_source()
    for folder in NOTEBOOK_DIRS:
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            if ".ipynb_checkpoints" in path.parts:
                continue
            first = json.loads(path.read_text())["cells"][0]
            assert "".join(first["source"]).startswith(SETUP_MARKER), f"{path}: first cell is not the setup cell"
            assert "".join(first["source"]) == src, f"{path}: stale setup cell; run python -m tools.colab"


def test_setup_cell_is_a_no_op_outside_colab(tmp_path, monkeypatch, capsys):
    """Outside Colab the cell ignores its settings: no clone, no install, no output, no scale set,
    nothing left in the notebook's namespace but os and sys. (On Colab: tests/test_colab_sim.py.)"""
    import os
    import sys

    monkeypatch.setenv("PREFLAB_HOME", str(tmp_path / "preflab"))
    monkeypatch.setenv("PREFLAB_REPO_URL", "file:///nonexistent/preflab.git")
    monkeypatch.delenv("PREFLAB_SCALE", raising=False)
    ns: dict = {}
    exec(setup_cell_source(), ns)  # must not clone, install or fail here
    assert "google.colab" not in sys.modules
    assert not (tmp_path / "preflab").exists() and "PREFLAB_SCALE" not in os.environ
    assert capsys.readouterr().out == ""
    assert set(ns) - {"__builtins__"} == {"os", "sys"}


def test_the_setup_cell_takes_the_repository_address_from_tools_colab():
    from tools.colab import REPO_URL

    src = setup_cell_source()
    assert src.count(REPO_URL) == 1 and "PREFLAB_REPO_URL" in src and "PREFLAB_HOME" in src


def _third_party_imports(source: str) -> set[str]:
    import ast
    import sys

    code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("preflab", "__main__")}


def test_every_import_of_the_library_lessons_and_exercises_is_declared():
    """`pip install "preflab[lessons]"` gives everything a lesson, an exercise or the library imports."""
    from importlib.metadata import packages_distributions

    used: dict[str, set[str]] = {}
    for path in sorted((ROOT / "preflab").glob("*.py")):
        for n in _third_party_imports(path.read_text()):
            used.setdefault(n, set()).add(path.name)
    for folder in ("lessons", "solutions", "exercises"):
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            if ".ipynb_checkpoints" in path.parts:
                continue
            for cell in json.loads(path.read_text())["cells"]:
                source = "".join(cell["source"])
                if cell["cell_type"] == "code" and not source.startswith(SETUP_MARKER):  # the setup cell runs on Colab only
                    for n in _third_party_imports(source):
                        used.setdefault(n, set()).add(path.name)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["lessons"]}
    dists = packages_distributions()
    missing = {n: sorted(where)[:3] for n, where in used.items()
               if not {d.lower().replace("_", "-") for d in dists.get(n, [n])} & declared}
    assert not missing, f"imported but not declared in pyproject's dependencies or its lessons extra: {missing}"


def test_the_tiny_checkpoints_are_package_data():
    """pyproject's package-data globs cover every file of the data card (the wheel test builds one)."""
    from fnmatch import fnmatch

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"]["preflab._data"] == "data" and "preflab._data" in tool["packages"]
    globs = tool["package-data"]["preflab._data"]
    card = json.loads((ROOT / "data" / "tiny" / "CARD.json").read_text())
    files = ["tiny/CARD.json"] + [f"tiny/{stage}/{name}" for stage, info in card["stages"].items() for name in info["files"]]
    for f in files:
        assert any(fnmatch(f, g) for g in globs), f"data/{f} is not package data"
    assert (ROOT / "data" / "__init__.py").is_file()


def test_tokenizer_config_names_a_class_transformers_4_and_5_both_load():
    for stage in ("base", "sft"):
        cfg = json.loads((ROOT / "data" / "tiny" / stage / "tokenizer_config.json").read_text())
        assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast", (stage, cfg["tokenizer_class"])


def test_missing_checkpoint_advice_fits_the_install(tmp_path, monkeypatch):
    import pytest

    import preflab.model as m

    (tmp_path / "tiny" / "sft").mkdir(parents=True)
    monkeypatch.setattr(m, "DATA_DIR", tmp_path)
    monkeypatch.setattr(m, "TINY_DIR", tmp_path / "tiny")
    with pytest.raises(FileNotFoundError, match="pip install --force-reinstall"):  # no Makefile beside it: a pip install
        m.load_policy("tiny")
    monkeypatch.setattr(m, "DATA_DIR", ROOT / "data")  # a checkout: make checkpoints
    assert "make checkpoints" in m._missing_data_advice(tmp_path / "tiny" / "sft" / "model.safetensors")


def test_a_missing_gpt2_directory_gets_a_clear_error(tmp_path):
    import pytest

    from preflab.model import load_policy

    # transformers 5 raises OSError here, 4.x HFValidationError (the path read as a hub name)
    with pytest.raises(FileNotFoundError, match="there is no directory"):
        load_policy("gpt2", stage="base", path=tmp_path / "absent")


def test_make_checkpoints_writes_the_portable_tokenizer_class(tmp_path):
    from transformers import AutoTokenizer

    from tools.build_checkpoints import portable_tokenizer_config

    tok = AutoTokenizer.from_pretrained(str(ROOT / "data" / "tiny" / "sft"))
    tok.save_pretrained(str(tmp_path))  # transformers 5 writes its own class name here
    portable_tokenizer_config(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "User: what is 2 plus 9?\nAssistant: 2 plus 9 is 11.<|endoftext|>"
    assert again(text)["input_ids"] == tok(text)["input_ids"] and again.pad_token_id == tok.pad_token_id
