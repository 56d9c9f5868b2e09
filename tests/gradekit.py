"""Shared by the grading tests: build submissions, run the real grader (as this user or as an
ordinary one), read what it wrote."""

from __future__ import annotations

import copy
import csv
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autograder import release as R  # noqa: E402

IDS = R.exercise_ids()
EX1 = IDS[0]
PLAIN_USER = "preflab-grader"


def nb(folder: str, aid: str) -> dict:
    return json.loads((REPO / folder / aid / f"{aid}.ipynb").read_text())


def cell(notebook: dict, gid: str) -> dict:
    return next(c for c in notebook["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)


def with_answer(notebook: dict, gid: str, source: str) -> dict:
    notebook = copy.deepcopy(notebook)
    cell(notebook, gid)["source"] = source
    return notebook


def extra_cell(notebook: dict, after_gid: str, source: str) -> dict:
    notebook = copy.deepcopy(notebook)
    k = notebook["cells"].index(cell(notebook, after_gid))
    notebook["cells"].insert(k + 1, {"cell_type": "code", "execution_count": None, "id": f"extra{k}", "metadata": {},
                                     "outputs": [], "source": source})
    return notebook


def write(path: Path, nb_or_text) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb_or_text, bytes):
        path.write_bytes(nb_or_text)
    else:
        path.write_text(nb_or_text if isinstance(nb_or_text, str) else json.dumps(nb_or_text, indent=1))


def rows(out: Path) -> dict[tuple[str, str], dict]:
    with open(out / "grades.csv", newline="") as fh:
        return {(r["student_id"], r["exercise"]): r for r in csv.DictReader(fh)}


def outputs_text(out: Path, student: str, aid: str) -> str:
    """Everything the graded notebook's cells printed (instructor copy)."""
    p = out / "course" / "autograded" / student / aid / f"{aid}.ipynb"
    graded = json.loads(p.read_text())
    return "".join("".join(o.get("text", "")) if isinstance(o.get("text"), (str, list)) else ""
                   for c in graded["cells"] for o in c.get("outputs", []))


def tree_hash(*paths: Path) -> str:
    """A hash of every file's path and bytes under the given paths (what must not change)."""
    h = hashlib.sha256()
    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def need_sandbox() -> None:
    """Skip (saying why and how to fix it) where bubblewrap cannot run: `make grade` refuses there."""
    import pytest

    from autograder.sandbox import INSTALL_HELP, probe

    ok, why = probe()
    if not ok:
        pytest.skip(f"the grader's sandbox cannot run here ({why}): {INSTALL_HELP}")


def run_grader(subs: Path | None, out: Path, *extra: str, user: dict | None = None, check: bool = True,
               timeout: int = 1500) -> subprocess.CompletedProcess:
    """``python -m autograder.grade`` as ``make grade`` runs it; with ``user`` (from
    :func:`plain_user`), as that ordinary user, from that user's own copy of the course."""
    where = [] if subs is None else [str(subs)]
    if user is None:
        cmd = [sys.executable, "-m", "autograder.grade", *where, "--out", str(out), *extra]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    else:
        cmd = ["setpriv", f"--reuid={user['uid']}", f"--regid={user['gid']}", "--init-groups", "--",
               "env", "-i", f"HOME={user['home']}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8",
               user["python"], "-m", "autograder.grade", *where, "--out", str(out), *extra]
        r = subprocess.run(cmd, cwd=user["repo"], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


# ----------------------------------------------------------------------------- an ordinary user
def _venv_key() -> str:
    h = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    h.update(b"v1")
    return h.hexdigest()[:12]


def plain_user() -> dict | None:
    """An ordinary account (made if this runs as root) with its own copy of the course and a
    virtual environment built from Debian's Python: how an instructor on a laptop or a JupyterHub
    server runs the grader. None where that cannot be arranged (not root, no useradd)."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not Path("/usr/bin/python3").exists():
        return None
    try:
        pw = pwd.getpwnam(PLAIN_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", PLAIN_USER], check=True, capture_output=True)
        pw = pwd.getpwnam(PLAIN_USER)
    home = Path(pw.pw_dir)
    repo = home / "course"
    # Two pytest-xdist workers can each ask for the account at once (worksteal splits a module's
    # tests): one lock around the setup, the copy redone only when the course changed (never while
    # the other worker grades from it), and a work folder of each caller's own.
    with open("/var/tmp/preflab-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        files = [f for f in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                                           capture_output=True, text=True, check=True).stdout.split("\n")
                 if f and (REPO / f).is_file() and not (REPO / f).is_symlink()]
        key = hashlib.sha256("\n".join(f"{f} {(REPO / f).stat().st_size} {(REPO / f).stat().st_mtime_ns}"
                                       for f in files).encode()).hexdigest()
        stamp = home / ".course-key"
        fresh = not (repo.exists() and stamp.exists() and stamp.read_text() == key)
        if fresh:
            shutil.rmtree(repo, ignore_errors=True)
            for f in files:
                (repo / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, repo / f)
        venv = Path("/var/tmp") / f"preflab-user-venv-{_venv_key()}"
        if not (venv / ".ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, capture_output=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run(pip + ["torch==2.13.0"], check=True, capture_output=True, timeout=1200)
            subprocess.run(pip + ["-e", f"{repo}[lab]"], check=True, capture_output=True, timeout=1200)
            (venv / ".ready").write_text("ok")
        elif fresh:  # the editable install points at the user's copy: re-link it (same path every run)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                            "--no-build-isolation", "--disable-pip-version-check", "-e", str(repo)],
                           check=True, capture_output=True, timeout=600)
        stamp.write_text(key)
        for old in [home / "work", *home.glob("work-*")]:  # left by earlier runs (a run takes under 2 h)
            if old.is_dir() and time.time() - old.stat().st_mtime > 7200:
                shutil.rmtree(old, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="work-", dir=home))
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(home)], check=True)
    return dict(uid=pw.pw_uid, gid=pw.pw_gid, home=str(home), repo=str(repo), python=str(venv / "bin" / "python"),
                work=work)


def give(user: dict, path: Path) -> None:
    """Hand files made by the test (as root) to the ordinary user."""
    subprocess.run(["chown", "-R", f"{user['uid']}:{user['gid']}", str(path)], check=True)
