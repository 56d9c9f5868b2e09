"""`pip install` gives a course that works: the wheel carries the tiny checkpoints as package data,
and lesson 00 and an exercise's checks pass in a fresh environment outside the repository.

The wheel is built from a copy of the package's sources (no build/ or egg-info left in the
checkout), installed with pip into a new venv made without --system-site-packages, and run from
a temporary folder. To stay fast the venv borrows the third-party dependencies already installed
beside this interpreter through a .pth file naming that site-packages folder (a plain path line:
the editable install's own .pth there is not run, so the repository is not importable); the
requirements the wheel declares are checked against what it finds. About a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "preflab", "data")
LESSON = REPO / "lessons" / "00_setup_and_tour.ipynb"
EXERCISE = REPO / "solutions" / "ex09_the_reference_policy" / "ex09_the_reference_policy.ipynb"
MAX_WHEEL_MB = 10


def _run(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the wheel, make a fresh venv outside the repository, install the wheel there."""
    tmp = tmp_path_factory.mktemp("wheel")
    t0 = time.time()
    src = tmp / "src"
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(p, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src], timeout=300, cwd=tmp)
    wheel = next(dist.glob("preflab-*.whl"))
    built = time.time() - t0

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120, cwd=tmp)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     timeout=60, cwd=tmp).stdout.strip())
    # pip (>= 22.3) installs into another interpreter's environment with --python
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         timeout=300, cwd=tmp)
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "_borrowed_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))

    # a kernel spec that starts this venv's interpreter (not whatever "python3" a machine has)
    kernels = tmp / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "preflab wheel", "language": "python"}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv),
               JUPYTER_PATH=str(tmp / "jupyter"), MPLBACKEND="Agg", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    work = tmp / "work"
    work.mkdir()
    return dict(wheel=wheel, venv=venv, python=python, site=site, env=env, work=work, tmp=tmp,
                seconds=time.time() - t0, build_seconds=built)


def test_wheel_carries_the_checkpoints_and_nothing_of_the_course_tooling(installed):
    wheel = installed["wheel"]
    mb = wheel.stat().st_size / 2**20
    assert mb < MAX_WHEEL_MB, f"wheel is {mb:.1f} MB"
    card = json.loads((REPO / "data" / "tiny" / "CARD.json").read_text())
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for stage, info in card["stages"].items():
            for name, sha in info["files"].items():
                member = f"preflab/_data/tiny/{stage}/{name}"
                assert member in names, f"{member} missing from the wheel"
                assert hashlib.sha256(z.read(member)).hexdigest() == sha, member
        assert "preflab/_data/tiny/CARD.json" in names and "preflab/_data/__init__.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"preflab", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    print(f"\nwheel {wheel.name}: {mb:.2f} MB; built in {installed['build_seconds']:.1f} s, "
          f"installed in a fresh venv in {installed['seconds']:.1f} s")


PROBE = textwrap.dedent("""
    import importlib.util, json, sys
    from importlib.metadata import distribution, requires, version
    from pathlib import Path
    from packaging.requirements import Requirement
    import preflab, preflab.model as m
    unmet = []
    for r in map(Requirement, requires("preflab") or []):
        if r.marker is None or r.marker.evaluate({"extra": "lessons"}):
            try:
                if not r.specifier.contains(version(r.name), prereleases=True):
                    unmet.append(f"{r} (have {version(r.name)})")
            except Exception as e:
                unmet.append(f"{r} ({e.__class__.__name__})")
    model, tok = m.load_policy("tiny", device="cpu")
    print(json.dumps(dict(
        file=preflab.__file__, data=str(m.DATA_DIR), sys_path=sys.path, unmet=unmet,
        tools=importlib.util.find_spec("tools") is not None, autograder=importlib.util.find_spec("autograder") is not None,
        advice=m._missing_data_advice(m.TINY_DIR / "sft" / "model.safetensors"),
        n_params=sum(p.numel() for p in model.parameters()), tokenizer=type(tok).__name__)))
""")


def test_installed_package_loads_the_tiny_policy_from_site_packages(installed):
    r = _run([installed["python"], "-c", PROBE], timeout=300, cwd=installed["work"], env=installed["env"])
    info = json.loads(r.stdout.strip().splitlines()[-1])
    site = installed["site"].resolve()
    assert Path(info["file"]).resolve().is_relative_to(site), info["file"]
    assert Path(info["data"]).resolve() == site / "preflab" / "_data"
    assert str(REPO) not in [str(Path(p).resolve()) for p in info["sys_path"] if p]
    assert not info["tools"] and not info["autograder"], "the repository is importable from the fresh venv"
    assert not info["unmet"], f"declared requirements not met: {info['unmet']}"
    card = json.loads((REPO / "data" / "tiny" / "CARD.json").read_text())
    assert info["n_params"] == card["parameters"]
    # the advice for a missing checkpoint suits a pip user: reinstall, not `make checkpoints`
    assert "pip install --force-reinstall" in info["advice"] and installed["wheel"].name in info["advice"]
    assert "make checkpoints" not in info["advice"]


RUN_NOTEBOOK = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import nbformat
    from nbclient import NotebookClient
    path, timeout = Path(sys.argv[1]), int(sys.argv[2])
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys, preflab, preflab.model\\n"
        "print('PREFLAB_FILE=' + preflab.__file__)\\nprint('PREFLAB_DATA=' + str(preflab.model.DATA_DIR))\\n"
        "print('KERNEL_PYTHON=' + sys.executable)"))
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    print(json.dumps({"seconds": round(time.time() - t0, 1), "text": text}))
""")


def _execute(installed, notebook: Path, folder: str, timeout: int) -> dict:
    dest = installed["work"] / folder / notebook.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(notebook, dest)
    runner = installed["tmp"] / "run_notebook.py"
    runner.write_text(RUN_NOTEBOOK)
    r = _run([installed["python"], runner, dest, timeout], timeout=timeout * 4, cwd=installed["work"],
             env=installed["env"])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    lines = dict(ln.split("=", 1) for ln in out["text"].splitlines() if ln.startswith(("PREFLAB_", "KERNEL_")))
    site = installed["site"].resolve()
    assert Path(lines["PREFLAB_FILE"]).resolve().is_relative_to(site), lines
    assert Path(lines["PREFLAB_DATA"]).resolve() == site / "preflab" / "_data", lines
    assert Path(lines["KERNEL_PYTHON"]) == installed["python"], lines
    print(f"\n{notebook.name}: {out['seconds']} s in the fresh venv")
    return out


def test_lesson_00_runs_from_the_installed_wheel(installed):
    out = _execute(installed, LESSON, "lessons", timeout=300)
    assert "CLAIM PASS" in out["text"] and "CLAIM FAIL" not in out["text"], out["text"][-2000:]


def test_an_exercise_solution_passes_its_checks_from_the_installed_wheel(installed):
    out = _execute(installed, EXERCISE, EXERCISE.parent.name, timeout=120)
    assert "[FAIL]" not in out["text"]
    assert "Self-check: " in out["text"] and ", 0 failed." in out["text"], out["text"][-2000:]
