"""The Colab setup cell (tools.colab.setup_cell_source) in a simulated Colab, on the CPU.

A fresh virtual environment stands for a new Colab runtime: torch first (the pinned CPU wheel),
then the versions Colab ships (ipywidgets 7.7.1, IPython 7.34, ipykernel 6.17, transformers 4.57,
numpy 2.0, all older than the course's own venv), a stub ``google.colab`` that the kernel
imports at start (as Colab's does) with a ``drive.mount`` stub, and ``/content`` redirected to a
temporary folder (``PREFLAB_HOME``). The course is cloned from a bare clone of this repository's
committed state (``PREFLAB_REPO_URL``; set PREFLAB_SIM_SOURCE to serve another clone), so the
test needs no network for the clone; pip still reaches the package index for the build backend
(setuptools), as it does on Colab.

In one kernel the cell meets a clone URL that does not exist, then an offline pip, then works,
then runs again as a no-op with Google Drive as the GPT-2 cache; each failure must print advice
and the rerun must recover. Then lesson 00 runs in a second kernel (another notebook on the same
runtime). No preinstalled package may change version.

The venv's third-party wheels are kept in build/colab-sim/wheels after the first run (the
proxy here stores nothing in pip's own cache), so later runs install offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from tools.colab import CONSTRAINTS_FILE, INSTALLED_MARKER, setup_cell_source

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"  # the Makefile's TORCH_SPEC: a local CPU wheel here, no CUDA download
#: What a Colab runtime has before the course arrives: its versions (2025) of ipywidgets (7.7.1,
#: what its front end renders), IPython and ipykernel, transformers 4.57, numpy, matplotlib and
#: tqdm. torch comes first, above.
COLAB_PREINSTALLED = ["ipywidgets==7.7.1", "ipython==7.34.0", "ipykernel==6.17.1", "transformers==4.57.6",
                      "numpy==2.0.2", "matplotlib==3.10.0", "tqdm==4.67.1", "nbclient", "packaging"]
WATCHED = ("torch", "numpy", "transformers", "ipywidgets", "ipython")
WHEELS = ROOT / "build" / "colab-sim" / "wheels"

GOOGLE_COLAB = '''"""A stand-in for Colab's google.colab package (tests/test_colab_sim.py)."""
from . import drive  # noqa: F401
'''
DRIVE = '''"""A stand-in for google.colab.drive: mount() makes <mountpoint>/MyDrive and logs the call."""
import json, os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
    with open(os.environ["COLAB_SIM_LOG"], "a") as f:
        f.write(json.dumps({"mount": mountpoint}) + "\\n")
    print("Mounted at", mountpoint)
'''
VERSIONS = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name'])"
            ".lower(): d.version for d in m.distributions()}))")
RUN_NOTEBOOK = textwrap.dedent('''
    import sys, nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(sys.argv[1], as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": sys.argv[3]}}).execute()
    nbformat.write(nb, sys.argv[2])
''')


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFLAB_", "VIRTUAL_ENV", "PYTHON", "JUPYTER", "IPYTHON", "MPLBACKEND"))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _wheelhouse(py: Path, env: dict) -> list[str]:
    """pip arguments that install COLAB_PREINSTALLED offline from build/colab-sim/wheels (filled once)."""
    key = hashlib.sha256(" ".join(COLAB_PREINSTALLED).encode()).hexdigest()[:12]
    folder = WHEELS / key
    if not (folder / "complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        # torch is already installed in this venv, so `pip download` resolves around it and never fetches it
        _run([str(py), "-m", "pip", "download", "-q", "-d", str(folder), *COLAB_PREINSTALLED], env=env)
        (folder / "complete").write_text("\n".join(COLAB_PREINSTALLED) + "\n")
    return ["--no-index", "--find-links", str(folder)]


def _versions(py: Path, env: dict) -> dict[str, str]:
    return json.loads(_run([str(py), "-c", VERSIONS], env=env, cwd="/").stdout)  # not the checkout's egg-info


def _code(nb, source: str):
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return len(nb.cells) - 1


def _text(cell) -> str:
    """What a cell showed: its streams and the error's own lines (as IPython renders them)."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append(o["text"])
        elif o["output_type"] == "error":
            out.append("\n".join(o["traceback"]) + f"\n[{o['ename']}]")
        elif "data" in o and "text/plain" in o["data"]:
            out.append(o["data"]["text/plain"])
    return "\n".join(out)


def _errors(cell) -> list[str]:
    return [o["ename"] for o in cell.get("outputs", []) if o["output_type"] == "error"]


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A simulated fresh Colab runtime: (python, env, content folder, bare repo URL, log file)."""
    base = tmp_path_factory.mktemp("colab")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # the system python's venv module, no --system-site-packages
    py = venv / "bin" / "python"
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    _run([str(py), "-m", "pip", "install", "-q", TORCH], env=env)
    _run([str(py), "-m", "pip", "install", "-q", *_wheelhouse(py, env), *COLAB_PREINSTALLED], env=env)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip())
    (site / "google" / "colab").mkdir(parents=True)  # `google` stays a namespace package, as on Colab
    (site / "google" / "colab" / "__init__.py").write_text(GOOGLE_COLAB)
    (site / "google" / "colab" / "drive.py").write_text(DRIVE)
    startup = base / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # Colab's kernel has it loaded\n")
    content = base / "content"
    content.mkdir()
    # the committed state of this repository (or of PREFLAB_SIM_SOURCE, another clone: a branch to try)
    _run(["git", "clone", "-q", "--bare", os.environ.get("PREFLAB_SIM_SOURCE", str(ROOT)), str(base / "preflab.git")])
    env.update(IPYTHONDIR=str(base / "ipython"), JUPYTER_CONFIG_DIR=str(base / "jupyter" / "config"),
               JUPYTER_DATA_DIR=str(base / "jupyter" / "data"), JUPYTER_RUNTIME_DIR=str(base / "jupyter" / "runtime"),
               PREFLAB_HOME=str(content / "preflab"), COLAB_SIM_LOG=str(base / "colab.log"), HOME=os.environ["HOME"])
    return py, env, content, f"file://{base / 'preflab.git'}", base / "colab.log"


def _execute(py: Path, env: dict, nb, path: Path, cwd: Path):
    nbformat.write(nb, path)
    out = path.with_name(path.stem + ".out.ipynb")
    _run([str(py), "-c", RUN_NOTEBOOK, str(path), str(out), str(cwd)], env=env, timeout=900)
    return nbformat.read(out, as_version=4)


@pytest.mark.slow
def test_setup_cell_on_a_simulated_colab(colab, tmp_path):
    py, env, content, repo_url, log = colab
    home = content / "preflab"
    before = _versions(py, env)
    assert before["ipywidgets"] == "7.7.1" and "preflab" not in before
    setup = setup_cell_source()

    nb = nbformat.v4.new_notebook()
    _code(nb, 'import os\nos.environ["PREFLAB_REPO_URL"] = "file:///nonexistent/preflab.git"')
    bad_clone = _code(nb, setup)
    offline = tmp_path / "no-wheels"
    offline.mkdir()
    _code(nb, f'os.environ["PREFLAB_REPO_URL"] = {repo_url!r}\n'
              f'saved = {{k: os.environ.get(k) for k in ("PIP_NO_INDEX", "PIP_FIND_LINKS")}}\n'
              f'os.environ.update(PIP_NO_INDEX="1", PIP_FIND_LINKS={str(offline)!r})  # pip offline after the clone')
    bad_pip = _code(nb, setup)
    _code(nb, 'for k, v in saved.items():\n    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)\n'
              f'print(sorted(os.listdir({str(home)!r})))')
    good = _code(nb, setup)
    _code(nb, f'os.environ["PREFLAB_CACHE"] = {str(content / "drive" / "MyDrive" / "preflab-cache")!r}')
    again = _code(nb, setup)
    probe = _code(nb, textwrap.dedent('''
        import json, shutil, preflab, torch, numpy, transformers, ipywidgets, IPython
        from preflab.model import TINY_DIR, gpt2_checkpoint_dir, load_policy
        # the Drive cache is where load_gpt2_sft looks: plant a (tiny) finetune there and load it
        target = gpt2_checkpoint_dir("sft")
        assert str(target).startswith(os.environ["PREFLAB_CACHE"]), target
        shutil.copytree(TINY_DIR / "sft", target)
        model, _ = load_policy("gpt2", device="cpu")
        print(json.dumps({"preflab": preflab.__file__, "scale": os.environ["PREFLAB_SCALE"],
                          "n_embd": model.config.n_embd, "torch": torch.__version__, "numpy": numpy.__version__,
                          "transformers": transformers.__version__, "ipywidgets": ipywidgets.__version__,
                          "ipython": IPython.__version__}))'''))
    nb = _execute(py, env, nb, tmp_path / "setup.ipynb", content)
    cells = nb.cells

    # 1. a clone URL that does not exist: advice, a short error, nothing left behind
    text = _text(cells[bad_clone])
    assert _errors(cells[bad_clone]) == ["PreflabSetupError"], text
    assert "could not download the course" in text and "online" in text and "Restart session" in text, text
    assert "!git clone" in text and "file:///nonexistent/preflab.git" in text, text
    assert "Traceback" not in text and "File " not in text, "the learner sees advice, not a traceback:\n" + text
    # 2. pip offline after the clone: advice with the command to run by hand; no marker, so a rerun retries
    text = _text(cells[bad_pip])
    assert _errors(cells[bad_pip]) == ["PreflabSetupError"], text
    assert "installing the course failed" in text and "run this cell again" in text, text
    assert f"!pip install -e {home} -c {home / CONSTRAINTS_FILE}" in text, text
    assert "setuptools" in text and "\x1b[" not in text, "pip's own error line, without terminal colours:\n" + text
    assert "pyproject.toml" in _text(cells[bad_pip + 1]) and INSTALLED_MARKER not in _text(cells[bad_pip + 1])
    # 3. fixed: the rerun installs (without cloning again) and keeps Colab's packages
    text = _text(cells[good])
    assert not _errors(cells[good]), text
    assert "preflab installed" in text and "downloading" not in text, text
    assert "preflab ready: scale tiny on cpu" in text and "PREFLAB_SCALE=gpt2" in text, text
    assert (home / INSTALLED_MARKER).exists()
    # 4. once more: a no-op that says so; Drive mounted for the GPT-2 cache
    text = _text(cells[again])
    assert not _errors(cells[again]), text
    assert "already installed" in text and "nothing to do" in text and "installing" not in text, text
    assert [json.loads(line)["mount"] for line in log.read_text().splitlines()] == [str(content / "drive")]
    assert (content / "drive" / "MyDrive" / "preflab-cache").is_dir()
    assert not _errors(cells[probe]), _text(cells[probe])
    seen = json.loads(_text(cells[probe]).strip().splitlines()[-1])
    assert seen["preflab"] == str(home / "preflab" / "__init__.py")
    assert seen["scale"] == "tiny" and seen["n_embd"] < 768  # the planted finetune came from Drive
    for name in WATCHED:  # the running kernel uses the preinstalled versions
        assert seen[name].split("+")[0] == before[name].split("+")[0], (name, seen[name], before[name])

    # lesson 00 in a second kernel on the same runtime, its first cell replaced by the new setup cell
    lesson = nbformat.read(ROOT / "lessons" / "00_setup_and_tour.ipynb", as_version=4)
    lesson.cells[0].source = setup
    lesson = _execute(py, env, lesson, tmp_path / "lesson00.ipynb", content)
    assert "already installed" in _text(lesson.cells[0])
    failed = [(i, _text(c)[-2000:]) for i, c in enumerate(lesson.cells) if c.cell_type == "code" and _errors(c)]
    assert not failed, failed

    after = _versions(py, env)
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not changed, f"preinstalled packages replaced or removed: {changed}"
    assert after["preflab"] and set(after) - set(before) == {"preflab"}, set(after) - set(before)


# ----------------------------------------------------------------------------- the GPT-2 cache (fast)
def _cache_target(cache: Path, base: dict | None = None, **overrides) -> Path:
    """Where load_gpt2_sft caches the finetune under ``cache``."""
    from preflab.model import gpt2_checkpoint_dir

    return gpt2_checkpoint_dir("sft", cache, base=base, **overrides)


def test_the_gpt2_finetune_is_read_from_PREFLAB_CACHE(tmp_path, monkeypatch):
    """The setup cell points PREFLAB_CACHE at Google Drive; load_gpt2_sft reads it at call time
    (an empty value means unset: ~/.cache/preflab)."""
    from preflab.model import TINY_DIR, load_gpt2_sft

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFLAB_GPT2_PATH", str(tmp_path / "no-gpt2-here"))  # a cache miss would fail loudly
    shutil.copytree(TINY_DIR / "sft", _cache_target(tmp_path / "drive" / "MyDrive" / "preflab-cache"))
    shutil.copytree(TINY_DIR / "sft", _cache_target(tmp_path / "home" / ".cache" / "preflab"))
    for cache in (str(tmp_path / "drive" / "MyDrive" / "preflab-cache"), ""):
        monkeypatch.setenv("PREFLAB_CACHE", cache)
        model, tok = load_gpt2_sft(device="cpu")
        assert model.config.n_embd < 768 and tok.pad_token_id is not None


def test_an_interrupted_save_is_rebuilt_and_none_is_left_half_written(tmp_path, monkeypatch, policy):
    """A checkpoint cut off mid-save (config.json, no weights) is not trusted; the rebuild is written
    beside the target and renamed, so no partial folder remains."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from preflab.model import gpt2_checkpoint_dir, load_gpt2_sft

    _, tok = policy
    base = tmp_path / "gpt2-local"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)).save_pretrained(base)
    tok.save_pretrained(base)
    monkeypatch.setenv("PREFLAB_GPT2_PATH", str(base))
    monkeypatch.setenv("PREFLAB_CACHE", str(tmp_path / "cache"))
    hp, base_hp = dict(steps=2, n_demos=8, batch_size=4), dict(steps=1, corpus_size=8, batch_size=4)
    target = _cache_target(tmp_path / "cache", base_hp, **hp)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # what an interrupted save left
    load_gpt2_sft(device="cpu", base=base_hp, **hp)
    assert (target / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [target.name, gpt2_checkpoint_dir("base", tmp_path / "cache", **base_hp).name])
