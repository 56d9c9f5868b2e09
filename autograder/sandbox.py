"""The sandbox every graded kernel runs in: an allow-list built on bubblewrap.

A graded kernel sees only what it needs, read-only: the Python installation and virtual
environment, the course library (``preflab/``) and its data, and /usr's system libraries; plus a
private /tmp and home (tmpfs of bounded size) and its own socket folder, the one place it can
write on the host. Nothing else of the machine exists for it: not the repository's solutions/,
autograder/ or .git, not the submissions, not the output folder, not other students' kernels.
It has no network, its own pid namespace (nothing it starts outlives it), and bounded
processes, memory, file sizes, open files and CPU time; a watchdog in the grader also bounds
the whole submission's memory and disk and kills it on a breach.

It works without root (unprivileged user namespaces) and as root (each submission under its own
throwaway uid). Where bubblewrap is missing or cannot run, :func:`probe` says why and the
grader refuses to grade unless the instructor passes ``--unsafe``.

Settings travel explicitly: a :class:`SandboxSpec` per submission, handed to the kernel
manager and the watchdog (no module-level state).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Any as TAny

LAUNCHER = str(Path(__file__).with_name("_launch.py"))
INSTALL_HELP = ("install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: `sudo dnf install "
                "bubblewrap`) and make sure unprivileged user namespaces are allowed "
                "(`sysctl kernel.unprivileged_userns_clone=1` on older Debian; on Ubuntu 24.04 "
                "`sysctl kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile for bwrap)")


@dataclass
class Limits:
    """What one submission may use. Per process (rlimits) unless said."""

    nproc: int = 256
    """Processes and threads (per throwaway uid as root: so per submission)."""
    as_mb: int = 8192
    """Address space of one process, MiB (torch reserves much more than it touches)."""
    fsize_mb: int = 64
    """Largest file one process may write, MiB."""
    nofile: int = 256
    """Open files per process."""
    cpu_s: int = 900
    """CPU seconds per process."""
    tmp_mb: int = 256
    """Size of each private tmpfs (/tmp and the home folder), MiB."""
    rss_mb: int = 4096
    """Resident memory of the whole submission (all its processes together), MiB: the watchdog."""
    disk_mb: int = 64
    """What the submission may write into its socket folder on the host, MiB: the watchdog."""


@dataclass
class SandboxSpec:
    """One submission's sandbox (``None`` fields are filled per job by :func:`for_job`)."""

    enabled: bool
    """False only with ``--unsafe``: the kernel then runs with the grader's rights."""
    readonly: list[str]
    """Host paths the kernel may read (bound at the same path)."""
    limits: Limits = field(default_factory=Limits)
    sock_dir: str = ""
    """The kernel's socket folder (read-write; the connection file lives here)."""
    inbox: str = ""
    """Where the grader's call requests are written (read-only to the kernel)."""
    etc_dir: str = ""
    """A minimal /etc (passwd, group, hosts) written for this job."""
    log: str = ""
    """The kernel's own stdout/stderr."""
    uid: int = 0
    """As root: the throwaway uid this submission runs as."""
    env: dict = field(default_factory=dict)

    def describe(self) -> str:
        if not self.enabled:
            return "NO SANDBOX (--unsafe): graded code runs with the grader's rights, files and network"
        who = "a throwaway uid per submission (grader runs as root)" if os.geteuid() == 0 else \
            "an unprivileged user namespace"
        lim = self.limits
        return (f"bubblewrap {bwrap_version()}, {who}; read-only: {', '.join(self.readonly)}; writable: its own "
                f"socket folder and private /tmp and home ({lim.tmp_mb} MiB each); no network; own pid namespace; "
                f"limits: {lim.nproc} processes, {lim.as_mb} MiB address space and {lim.cpu_s} s CPU per process, "
                f"{lim.rss_mb} MiB resident and {lim.disk_mb} MiB written per submission")


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def bwrap_version() -> str:
    try:
        return subprocess.run([bwrap_path() or "bwrap", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.split()[-1]
    except Exception:  # noqa: BLE001
        return "?"


def readonly_paths() -> list[str]:
    """The allow-list: the interpreter, the environment, the library and its data, /usr."""
    import preflab  # light: the data folder is found without importing torch (preflab.model)

    paths = [sys.base_prefix, sys.prefix, str(Path(preflab.__file__).resolve().parent), str(preflab.data_dir()), "/usr"]
    exe = Path(sys.executable)
    paths.append(str(exe.resolve().parent.parent))
    out: list[str] = []
    for p in sorted({str(Path(p).resolve()) for p in paths if p and Path(p).exists()}, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def kernel_env(spec: SandboxSpec, home: str) -> dict:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp",
        "USER": "student",
        "LOGNAME": "student",
        "IPYTHONDIR": f"{home}/.ipython",
        "MPLCONFIGDIR": f"{home}/.mpl",
        "MPLBACKEND": "Agg",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "NBGRADER_EXECUTION": "autograde",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": f"{home}/.hf",
        "PREFLAB_SCALE": "tiny",
    }
    if os.environ.get("VIRTUAL_ENV"):
        env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
    env.update(spec.env)
    return env


HOME = "/home/student"


def launch_spec(spec: SandboxSpec) -> dict:
    """The JSON the launcher (``autograder/_launch.py``) reads."""
    lim = spec.limits
    ro = [(p, p) for p in spec.readonly] + [(spec.inbox, spec.inbox), (spec.etc_dir, "/etc")]
    return dict(bwrap=bwrap_path() or "bwrap", ro=ro, rw=[(spec.sock_dir, spec.sock_dir)], home=HOME,
                tmp_mb=lim.tmp_mb, env=kernel_env(spec, HOME), cwd=HOME, uid=spec.uid, log=spec.log,
                limits=dict(nproc=_nproc(lim), as_mb=lim.as_mb, fsize_mb=lim.fsize_mb, nofile=lim.nofile,
                            cpu_s=lim.cpu_s))


def _nproc(lim: Limits) -> int:
    """As root the limit is the submission's own; as an ordinary user RLIMIT_NPROC counts every
    process of that user, so the limit is what the user already runs plus the allowance."""
    if os.geteuid() == 0:
        return lim.nproc
    me, n = os.getuid(), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = os.stat(f"/proc/{d}")
                if st.st_uid == me:
                    n += len(os.listdir(f"/proc/{d}/task"))
            except OSError:
                continue
    return n + lim.nproc


def write_etc(etc_dir: Path, uid: int) -> None:
    etc_dir.mkdir(parents=True, exist_ok=True)
    u = uid if os.geteuid() == 0 else os.getuid()
    g = uid if os.geteuid() == 0 else os.getgid()
    (etc_dir / "passwd").write_text(f"student:x:{u}:{g}:student:{HOME}:/bin/sh\n")
    (etc_dir / "group").write_text(f"student:x:{g}:\n")
    (etc_dir / "hosts").write_text("127.0.0.1 localhost\n")
    for f in etc_dir.iterdir():
        f.chmod(0o644)
    etc_dir.chmod(0o755)


def prepare_job_dirs(spec: SandboxSpec, job_dir: Path) -> SandboxSpec:
    """Make the socket folder, inbox and /etc of one job (owned so the kernel can use them)."""
    import random

    sock, inbox, etc = job_dir / "sock", job_dir / "inbox", job_dir / "etc"
    for d in (sock, inbox):
        d.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    spec.uid = random.randrange(1_950_000_000, 2_000_000_000) if root else os.getuid()
    write_etc(etc, spec.uid)
    if root and spec.enabled:
        os.chown(sock, spec.uid, spec.uid)
    sock.chmod(0o700)
    inbox.chmod(0o755)
    spec.sock_dir, spec.inbox, spec.etc_dir, spec.log = str(sock), str(inbox), str(etc), str(job_dir / "kernel.log")
    return spec


# ----------------------------------------------------------------------------- probe
_probe_cache: dict = {}


def probe(readonly: list[str] | None = None) -> tuple[bool, str]:
    """(works, reason): can a kernel start in the sandbox here? Runs the real launcher once with a
    tiny Python program that must see the allow-list and nothing else."""
    if "result" in _probe_cache:
        return _probe_cache["result"]
    if bwrap_path() is None:
        res = (False, "bubblewrap (bwrap) is not installed")
    else:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="pfg-probe-"))
        try:
            spec = prepare_job_dirs(SandboxSpec(enabled=True, readonly=readonly or readonly_paths()), tmp)
            check = ("import os, socket, sys\n"
                     "import preflab\n"
                     "assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(preflab.__file__)), 'solutions')), 'solutions visible'\n"
                     "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    sys.exit('network reachable')\n"
                     "except OSError:\n    pass\n"
                     "print('sandbox ok', os.getuid())\n")
            cmd = [sys.executable, LAUNCHER, json.dumps(launch_spec(spec)), "--", sys.executable, "-c", check]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            log = Path(spec.log).read_text(errors="replace") if Path(spec.log).exists() else ""
            text = (r.stdout + r.stderr + log).strip()
            res = (r.returncode == 0 and "sandbox ok" in log,
                   "ok" if r.returncode == 0 and "sandbox ok" in log else f"bubblewrap failed: {text[-300:]}")
        except Exception as e:  # noqa: BLE001
            res = (False, f"bubblewrap failed: {type(e).__name__}: {e}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _probe_cache["result"] = res
    return res


# ----------------------------------------------------------------------------- the kernel manager
class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernel starts through the launcher in ``spec``'s sandbox, with
    ZeroMQ over ipc sockets in the sandbox's socket folder (a network namespace does not cut
    them; TCP would need a shared network)."""

    spec = TAny(None, help="the SandboxSpec of this kernel (set by the grader)")

    def __init__(self, *args, spec: SandboxSpec | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.transport = "ipc"
        self.connection_file = os.path.join(spec.sock_dir, "kernel.json")
        self.ip = os.path.join(spec.sock_dir, "k")

    async def _async_pre_start_kernel(self, **kw):
        kw["cwd"] = self.spec.sock_dir
        if not self.spec.enabled:
            kw["env"] = kernel_env(self.spec, self.spec.sock_dir) | {"HOME": self.spec.sock_dir,
                                                                      "TMPDIR": self.spec.sock_dir}
        return await super()._async_pre_start_kernel(**kw)

    def write_connection_file(self, **kwargs) -> None:
        super().write_connection_file(**kwargs)
        if self.spec.enabled and os.geteuid() == 0:
            os.chown(self.connection_file, self.spec.uid, self.spec.uid)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if not self.spec.enabled:
            return cmd
        return [sys.executable, LAUNCHER, json.dumps(launch_spec(self.spec)), "--"] + cmd

    async def interrupt_kernel(self) -> None:
        """Interrupt by message on the control channel: a SIGINT to the process group would reach
        bubblewrap too, which dies of it and takes the kernel along."""
        if not self.spec.enabled or not self.has_kernel:
            return await super().interrupt_kernel()
        self._connect_control_socket()
        self.session.send(self._control_socket, self.session.msg("interrupt_request", content={}))

    def client(self, **kwargs):
        import zmq

        # Refuse oversized messages from the kernel before they are read into memory.
        self.context.setsockopt(zmq.MAXMSGSIZE, 96 * 1024 * 1024)
        return super().client(**kwargs)

    @property
    def pid(self) -> int | None:
        proc = getattr(getattr(self, "provisioner", None), "process", None)
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill_now(self) -> None:
        """Kill the sandbox (the launcher's process group; the pid namespace takes the rest)."""
        proc = getattr(getattr(self, "provisioner", None), "process", None)
        if proc is None or proc.poll() is not None:
            return
        for fn in (lambda: os.killpg(os.getpgid(proc.pid), signal.SIGKILL), proc.kill):
            try:
                fn()
                return
            except Exception:  # noqa: BLE001
                continue


# ----------------------------------------------------------------------------- the watchdog
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, MiB."""
    kids, todo, seen, pages = _children_map(), [pid], set(), 0
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as fh:
                pages += int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass
        todo += kids.get(p, [])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def dir_mb(path: str, max_entries: int = 20000) -> float:
    total, n = 0, 0
    for dirpath, dirs, files in os.walk(path):
        for f in files:
            n += 1
            if n > max_entries:
                return float("inf")
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total / 2 ** 20


class Watchdog(threading.Thread):
    """Kills a submission's kernel when, all processes together, it holds more than ``rss_mb`` of
    memory, writes more than ``disk_mb`` into its folder, or runs past ``deadline_s``.
    ``reason`` says which, once it fired."""

    def __init__(self, km: SandboxKernelManager, limits: Limits, deadline_s: float, period_s: float = 0.25):
        super().__init__(daemon=True)
        self.km, self.limits, self.deadline = km, limits, time.monotonic() + deadline_s
        self.period, self.reason, self._stop_evt = period_s, "", threading.Event()

    def stop(self) -> None:
        self._stop_evt.set()

    def fire(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.km.kill_now()

    def run(self) -> None:
        while not self._stop_evt.wait(self.period):
            if time.monotonic() > self.deadline:
                self.fire("the notebook ran past its time limit")
                return
            pid = self.km.pid
            if pid is None:
                continue
            rss = tree_rss_mb(pid)
            if rss > self.limits.rss_mb:
                self.fire(f"the notebook used {rss:.0f} MiB of memory (the limit is {self.limits.rss_mb} MiB)")
                return
            if self.km.spec.sock_dir and dir_mb(self.km.spec.sock_dir) > self.limits.disk_mb:
                self.fire(f"the notebook wrote more than {self.limits.disk_mb} MiB of files")
                return
