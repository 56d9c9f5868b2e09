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
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["lab"]}
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert wanted == listed, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    # same version constraints, requirement by requirement
    spec = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["lab"]}
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
