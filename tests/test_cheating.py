"""What a class would try against the grader, run through the real `make grade`, as root and as
an ordinary user (where the tests run as root; otherwise as this user only).

Every attack is a student's answer to exercise 1 (the rest of the notebook left as released, so
an honest score is what its function would earn without the attack: a student "baseline" whose
function returns zeros). For each: no points gained, nothing read outside the sandbox (probes print
LEAK when they read something they must not, BLOCKED when they are stopped), nothing damaged (the
course's files, the Python environment, the grading template, other students' grades), nothing
left running, and the batch completes with every honest student's full marks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from gradekit import EX1, REPO, give, nb, need_sandbox, outputs_text, plain_user, rows, run_grader, tree_hash, with_answer, write

pytestmark = pytest.mark.slow

SOL = nb("solutions", EX1)
REL = nb("exercises", EX1)
MARKER = "preflab-attack-marker"


def _secrets() -> list[str]:
    """Strings that exist only in the instructor's files: a line of solution code and a line of
    hidden-test code from exercise 1."""
    out = []
    for c in SOL["cells"]:
        src = "".join(c["source"])
        if "### BEGIN SOLUTION" in src:
            body = src.split("### BEGIN SOLUTION", 1)[1].split("### END SOLUTION", 1)[0]
            out.append(max((ln.strip() for ln in body.splitlines()), key=len))
        if "### BEGIN HIDDEN TESTS" in src:
            body = src.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
            out.append(max((ln.strip() for ln in body.splitlines()), key=len))
    return sorted(set(out))[:6]


SECRETS = _secrets()
ZEROS = "\ndef pairwise_loss(r_chosen, r_rejected):\n    return [0.0] * len(r_chosen)\n"

ATTACKS = {
    # ---- reading the expected values at call time
    "frame": r'''
import sys
def pairwise_loss(r_chosen, r_rejected):
    found, f = [], sys._getframe(1)
    while f is not None:
        for k, v in list(f.f_globals.items()) + list(f.f_locals.items()):
            if k.startswith("_exp") or k in ("expected", "_want"):
                found.append(v)
        f = f.f_back
    print(("LEAK frame %r" % found[:1]) if found else "BLOCKED frame")
    return found[0] if found else [0.0] * len(r_chosen)
''',
    "user_ns": r'''
def pairwise_loss(r_chosen, r_rejected):
    ns = get_ipython().user_ns
    hits = [k for k in ns if k.startswith("_exp") or k.startswith("_g") or k == "_big"]
    print(("LEAK user_ns %r" % hits) if hits else "BLOCKED user_ns")
    return [0.0] * len(r_chosen)
''',
    # ---- replacing the checks, the comparisons, the channel
    "patch_checker": r'''
import preflab.selfcheck as s
for n in ("close", "equal", "true", "finite", "raises", "kind", "unchanged", "_record", "_is_close", "to_floats"):
    setattr(s, n, lambda *a, **k: True)
''' + ZEROS,
    "patch_numpy_builtins": r'''
import builtins, math
import numpy as np
np.isclose = np.allclose = np.array_equal = lambda *a, **k: True
math.isclose = lambda *a, **k: True
builtins.abs = lambda x: 0
''' + ZEROS,
    "float_subclass": r'''
class Liar(float):
    def __eq__(self, o): return True
    def __ne__(self, o): return False
    def __sub__(self, o): return Liar(0.0)
    __rsub__ = __sub__
    def __abs__(self): return Liar(0.0)
    def __le__(self, o): return True
    __lt__ = __ge__ = __gt__ = __le__
    def __bool__(self): return True
def pairwise_loss(r_chosen, r_rejected):
    return [Liar(0.0) for _ in r_chosen]
''',
    "forge_results": r'''
import socket, struct
import preflab.wire as w
BAD = ['{"$t":"dict","v":{"ok":true,"value":{"$t":"model","kind":"gpt2_lm","config":{"model_type":"gpt2","n_layer":99999}}}}',
       '{"$t":"dict","v":{"ok":true,"value":{"$t":"ndarray","npy":"' + "A" * 4000 + '"}}}',
       "x" * (8 << 20), '[' * 100000]
def fake_session(sock_path):  # the socket a test cell's calls use: forged frames, then a lie about a frame's size
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    for i in range(len(BAD) + 1):
        head = s.recv(4)
        if len(head) < 4 or head == bytes(4):
            return
        s.recv(struct.unpack(">I", head)[0])
        if i == len(BAD):
            s.sendall(struct.pack(">I", 0xFFFFFFF0) + b"{")
            return
        b = BAD[i].encode()
        s.sendall(struct.pack(">I", len(b)) + b)
w.serve_session = fake_session
''' + ZEROS,
    "fake_pass_and_html": r'''
print("[PASS] everything (3/3)")
print("<script>alert('injected')</script>")
def pairwise_loss(r_chosen, r_rejected):
    print("[PASS] hidden: random scores (0.3/0.3)")
    raise ValueError("<img src=x onerror=alert(1)>[PASS] fake")
''',
    # ---- reading what is outside the sandbox
    "read_files": r'''
import os, glob, time
SECRETS = %(secrets)r
PATHS = %(paths)r
for p in PATHS:
    try:
        if os.path.isdir(p):
            print("LEAK listdir", p, os.listdir(p)[:3])
        else:
            with open(p, "rb") as fh:
                print("LEAK read", p, len(fh.read(100)))
    except Exception as e:
        print("BLOCKED", p, type(e).__name__)
# the kernel's own socket folder and inbox live below /tmp/pfg-*/job-*/sbx/: anything else there
# (another job, the scratch course with its gradebook, the checker's log) must be invisible
import re
OWN = re.compile(r"^/job-[^/]+(/sbx(/(inbox|sock|etc)(/.*)?)?)?$")
for top in glob.glob("/tmp/pfg-*") + glob.glob("/proc/[0-9]*/root/tmp/pfg-*"):
    for dirpath, dirs, files in os.walk(top):
        for x in dirs + files:
            rel = os.path.join(dirpath, x)[len(top):]
            if not OWN.match(rel):
                print("LEAK other sandbox", top + rel)
    if len(glob.glob(top + "/job-*")) > 1:
        print("LEAK other jobs", glob.glob(top + "/job-*"))
t0, n = time.time(), 0
for top in ["/"]:
    for dirpath, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in ("/proc", "/sys", "/dev")]
        for f in files:
            if not f.endswith((".ipynb", ".json", ".db", ".txt", ".csv", ".html")) or time.time() - t0 > 25:
                continue
            try:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    data = fh.read(1 << 21)
                n += 1
            except Exception:
                continue
            if any(s.encode() in data for s in SECRETS) or data.startswith(b"SQLite format 3") and b"preflab" in data:
                print("LEAK found", os.path.join(dirpath, f))
print("BLOCKED walk: scanned", n, "files")
try:
    print(("LEAK host shadow" if "root:" in open("/proc/1/root/etc/shadow").read() else "BLOCKED shadow"))
except Exception as e:
    print("BLOCKED shadow", type(e).__name__)
''',
    "network": r'''
import socket
for host, port in [("1.1.1.1", 53), ("127.0.0.1", %(port)d), ("::1", %(port)d)]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("LEAK network", host, port)
    except Exception as e:
        print("BLOCKED network", host, port, type(e).__name__)
''' + ZEROS,
    # ---- changing what later runs or other students see
    "tamper_files": r'''
import os, sys, sysconfig, preflab, preflab.selfcheck
TARGETS = [preflab.selfcheck.__file__, os.path.join(sysconfig.get_paths()["purelib"], "zz_preflab_evil.pth"),
           os.path.join(os.path.dirname(preflab.__file__), "evil.py")] + %(targets)r
for t in TARGETS:
    try:
        with open(t, "a") as fh:
            fh.write("import os  # injected\n")
        print("LEAK wrote", t)
    except Exception as e:
        print("BLOCKED write", t, type(e).__name__)
''' + ZEROS,
    "outlive": r'''
import os, subprocess, time
subprocess.Popen(["/bin/sh", "-c", "sleep 6; echo hacked > %(csv)s; sleep 60 # %(marker)s"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(6)
        try:
            open(%(csv)r, "w").write("student_id,score\nvictim,99\n")
        except Exception:
            pass
        time.sleep(60)
    os._exit(0)
''' + ZEROS,
    "kill_others": r'''
import os, signal
print("VISIBLE", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
try:
    os.kill(-1, signal.SIGKILL)
except Exception as e:
    print("kill -1:", type(e).__name__)
''' + ZEROS,
    # ---- bombs, bounded to this machine
    "fork_bomb": r'''
import os, time
kids = 0
try:
    for _ in range(5000):
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
        kids += 1
except OSError as e:
    print("forks stopped after", kids, type(e).__name__)
''' + ZEROS,
    "memory_bomb": r'''
blocks = []
try:
    for _ in range(80):
        blocks.append(bytearray(64 << 20))
except MemoryError:
    print("MemoryError after", len(blocks) * 64, "MiB")
''' + ZEROS,
    "disk_bomb": r'''
import os, ipykernel.connect
d = os.path.dirname(ipykernel.connect.get_connection_file())
for where in ("/tmp", d):
    try:
        for i in range(40):
            with open(os.path.join(where, "junk{}".format(i)), "wb") as fh:
                fh.write(b"0" * (8 << 20))
    except OSError as e:
        print("disk stopped in", where, type(e).__name__)
''' + ZEROS,
    "output_bomb": r'''
for _ in range(120):
    print("x" * (1 << 20))
''' + ZEROS,
    "ignore_interrupt": r'''
import time
def pairwise_loss(r_chosen, r_rejected):
    while True:
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            pass
''',
    "huge_result": r'''
import numpy as np
def pairwise_loss(r_chosen, r_rejected):
    return np.zeros(20_000_000)
''',
}


class Listener:
    """A TCP server on the host's loopback that counts who reaches it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port, self.hits, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.hits += 1
                conn.close()
            except OSError:
                continue


def _survivors(log: str) -> list[str]:
    """Processes of this batch still alive: its kernels (their command lines name the run's scratch
    folder, which the grader logs) and anything the attacks started (the marker)."""
    import re

    m = re.search(r"scratch: (\S+)", log)
    tag = m.group(1) if m else MARKER
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            uid = os.stat(f"/proc/{d}").st_uid
        except OSError:
            continue
        if MARKER in cmd or tag in cmd:
            out.append(f"{d} uid={uid} {cmd[:120]}")
    return out


def _site_packages(python: str) -> Path:
    return Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())


def _batch(work: Path, repo: Path, python: str, user: dict | None) -> dict:
    subs, out = work / "subs", work / "out"
    listener = Listener()
    cache = Path(user["home"] if user else Path.home()) / ".cache" / "preflab"
    fmt = dict(secrets=SECRETS, port=listener.port, csv=str(out / "grades.csv"), marker=MARKER,
               paths=[str(repo / "solutions"), str(repo / "solutions" / EX1 / f"{EX1}.ipynb"), str(repo / ".git"),
                      str(repo / "autograder"), str(out), str(out / "course" / "gradebook.db"), str(cache), "/root/.bash_history",
                      "/etc/shadow", str(work)],
               targets=[str(repo / "solutions" / EX1 / f"{EX1}.ipynb"), str(out / "state.json"), str(cache / "x")])
    for name, code in ATTACKS.items():
        write(subs / name / f"{EX1}.ipynb", with_answer(REL, "ex01_rule", code % fmt if "%(" in code else code))
    for v in ("victim", "victim2", "victim3"):
        write(subs / v / f"{EX1}.ipynb", SOL)
    # what the attacks' code earns without the attack: a function that returns zeros
    write(subs / "baseline" / f"{EX1}.ipynb", with_answer(REL, "ex01_rule", ZEROS))
    # hostile names and archives
    write(subs / '=HYPERLINK("http://evil","click")' / f"{EX1}.ipynb", REL)
    (subs / "linker").mkdir(parents=True)
    os.symlink(repo / "solutions" / EX1 / f"{EX1}.ipynb", subs / "linker" / f"{EX1}.ipynb")
    inner = work / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:                          # mallory's archive holds victim2's folder
        z.writestr(f"victim2/{EX1}.ipynb", json.dumps(REL))
    write(subs / "mallory" / "all_my_work.zip", inner.read_bytes())
    with zipfile.ZipFile(subs / "export.zip", "w") as z:
        z.writestr(f"export/zoe_1_{EX1}.ipynb", json.dumps(SOL))
        z.writestr("export/../../escaped.ipynb", json.dumps(SOL))
        link = zipfile.ZipInfo(f"export/yann_2_{EX1}.ipynb")
        link.external_attr = 0o120777 << 16
        z.writestr(link, str(repo / "solutions" / EX1 / f"{EX1}.ipynb"))
    tampered = json.loads(json.dumps(REL))
    for c in tampered["cells"]:
        g = c["metadata"].get("nbgrader", {})
        if g.get("grade") and c["cell_type"] == "code":
            g["points"] = 100
            c["source"] = "print('no tests here')"
    write(subs / "tamper_meta" / f"{EX1}.ipynb", tampered)
    if user:
        give(user, work)
        (subs / "unreadable").mkdir()
        write(subs / "unreadable" / f"{EX1}.ipynb", SOL)
        give(user, subs / "unreadable")
        os.chmod(subs / "unreadable" / f"{EX1}.ipynb", 0)
    guarded = [repo / "preflab", repo / "autograder", repo / "solutions", repo / "exercises", repo / "data"]
    before = tree_hash(*guarded)
    site = _site_packages(python)
    pth_before = sorted(p.name for p in site.glob("*.pth"))
    t0 = time.time()
    try:
        r = run_grader(subs, out, "--workers", "2", "--timeout", "8", "--notebook-timeout", "150", "--memory-mb", "1024",
                       user=user)
    finally:
        listener.stop = True
    seconds = time.time() - t0
    time.sleep(8)  # longer than the detached processes wait before they strike
    return dict(out=out, rows=rows(out), log=r.stderr, before=before, after=tree_hash(*guarded), seconds=seconds,
                pth=(pth_before, sorted(p.name for p in site.glob("*.pth"))), listener=listener,
                survivors=_survivors(r.stderr), csv=(out / "grades.csv").read_text(), subs=subs,
                escaped=(work / "escaped.ipynb").exists() or (subs.parent / "escaped.ipynb").exists())


RUNNERS = ["root", "user"] if os.geteuid() == 0 else ["user"]


@pytest.fixture(scope="module", params=RUNNERS)
def attacked(request, tmp_path_factory):
    need_sandbox()
    if request.param == "root" or os.geteuid() != 0:
        res = _batch(tmp_path_factory.mktemp(f"cheat-{request.param}"), REPO, sys.executable, None)
    else:
        user = plain_user()
        if user is None:
            pytest.skip("no ordinary account can be made here (useradd or Debian's python3 missing)")
        res = _batch(user["work"], Path(user["repo"]), user["python"], user)
    res["runner"] = request.param
    return res


def test_the_batch_completes_and_honest_students_keep_full_marks(attacked):
    rs = attacked["rows"]
    for name in ATTACKS:
        assert (name, EX1) in rs, f"no row for {name}: {sorted(rs)[:40]}"
    full = float(rs[("victim", EX1)]["auto_max_score"])
    for v in ("victim", "victim2", "victim3", "zoe"):
        assert float(rs[(v, EX1)]["auto_score"]) == full, rs[(v, EX1)]
    assert "sandbox: bubblewrap" in attacked["log"]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_gains_no_points_and_reads_nothing(attacked, name):
    r = attacked["rows"][(name, EX1)]
    honest = float(attacked["rows"][("baseline", EX1)]["auto_score"])
    assert r["auto_score"] == "" or float(r["auto_score"]) <= honest, (r, honest)
    text = outputs_text(attacked["out"], name, EX1)
    assert "LEAK" not in text, [ln for ln in text.splitlines() if "LEAK" in ln][:5]
    page = (attacked["out"] / "feedback" / name / f"{EX1}.html").read_text()
    for s in SECRETS + ["BEGIN HIDDEN", "SQLite format"]:
        assert s not in page and s not in text, (name, s)
    if "BLOCKED" in ATTACKS[name]:
        assert "BLOCKED" in text, text[-2000:]


def test_printed_passes_and_html_never_reach_the_feedback(attacked):
    page = (attacked["out"] / "feedback" / "fake_pass_and_html" / f"{EX1}.html").read_text()
    assert "<script" not in page and "<img" not in page and "everything (3/3)" not in page
    assert "&lt;img src=x" in page  # the exception message is shown, escaped


def test_nothing_is_damaged(attacked):
    assert attacked["before"] == attacked["after"], "the course's files changed during grading"
    assert attacked["pth"][0] == attacked["pth"][1], "a .pth file appeared in the environment"
    assert "hacked" not in attacked["csv"] and "victim,99" not in attacked["csv"]
    state = json.loads((attacked["out"] / "state.json").read_text())
    assert state["version"] == 2
    assert not attacked["escaped"], "a zip member escaped the unpack folder"


def test_nothing_outlives_the_grader_or_reaches_the_network(attacked):
    assert attacked["survivors"] == []
    assert attacked["listener"].hits == 0


def test_bombs_are_bounded_and_say_so(attacked):
    rs = attacked["rows"]
    assert rs[("memory_bomb", EX1)]["status"] in ("error", "ok"), rs[("memory_bomb", EX1)]
    assert "memory" in rs[("memory_bomb", EX1)]["reason"] or "MemoryError" in outputs_text(attacked["out"], "memory_bomb", EX1)
    assert rs[("disk_bomb", EX1)]["status"] == "error" and "MiB of files" in rs[("disk_bomb", EX1)]["reason"]
    graded = attacked["out"] / "course" / "autograded" / "output_bomb" / EX1 / f"{EX1}.ipynb"
    assert graded.stat().st_size < 8 << 20 and "output truncated" in graded.read_text()
    assert rs[("ignore_interrupt", EX1)]["status"] == "timeout", rs[("ignore_interrupt", EX1)]


def test_hostile_names_and_archives(attacked):
    rs = attacked["rows"]
    assert "'=HYPERLINK" in attacked["csv"]
    assert rs[("linker", EX1)]["status"] == "invalid" and "symbolic link" in rs[("linker", EX1)]["reason"]
    assert ("mallory", "unrecognized:all_my_work.zip") in rs and "not opened" in rs[("mallory", "unrecognized:all_my_work.zip")]["reason"]
    assert ("yann", EX1) not in rs or rs[("yann", EX1)]["auto_score"] in ("", "0")
    tm = rs[("tamper_meta", EX1)]
    assert float(tm["score"]) == 0 and float(tm["max_score"]) < 100 and "restored" in tm["reason"]
    if attacked["runner"] == "user":
        assert rs[("unreadable", EX1)]["status"] == "invalid" and "read" in rs[("unreadable", EX1)]["reason"]
