"""Run each graded kernel where it cannot see the answers or the network.

When the grader runs as root and ``unshare`` works, every kernel starts like this:

    unshare --mount --net -- python _launch.py --uid U --gid U --cwd SANDBOX --hide P ... -- python -m ipykernel_launcher -f SANDBOX/kernel.json

* ``--net``: a fresh network namespace with no interface up, so no socket can reach anything.
  The grader talks to the kernel over ZeroMQ *ipc* sockets (files in SANDBOX), which a
  network namespace does not cut.
* ``--mount``: a private mount namespace in which ``_launch.py`` mounts an empty, mode-000
  tmpfs over every hidden path (the repository's solutions/, autograder/ and .git/, the
  submissions folder, the output folder, the grading scratch root, /root), then drops to an
  unprivileged uid that owns nothing but SANDBOX (an empty folder, mode 0700), and applies
  resource limits (processes, memory, file size).

Where that is impossible (not root, no ``unshare``, a container without mount rights) the
kernel runs as the grader's user in SANDBOX, and the grader logs a warning once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

log = logging.getLogger("autograder")

LAUNCHER = str(Path(__file__).with_name("_launch.py"))
REPO = Path(__file__).resolve().parent.parent

#: The sandbox in force for kernels started by this process (set by the grader per job).
CURRENT: dict = {}
#: Kernel managers started for the current job (so a watchdog can kill them).
STARTED: list = []

_probe_cache: dict = {}


def probe() -> tuple[bool, str]:
    """(available, reason): can this process start kernels in the full sandbox?"""
    if "result" in _probe_cache:
        return _probe_cache["result"]
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        res = (False, "the grader is not running as root")
    elif shutil.which("unshare") is None or shutil.which("setpriv") is None:
        res = (False, "the unshare or setpriv command is missing")
    else:
        cmd = ["unshare", "--mount", "--net", "--", sys.executable, LAUNCHER, "--probe",
               "--hide", str(REPO / "solutions"), "--uid", "1950000000", "--gid", "1950000000",
               "--cwd", "/", "--", sys.executable, "-c", "pass"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            res = (r.returncode == 0, "ok" if r.returncode == 0 else
                   f"unshare/mount failed: {(r.stderr or r.stdout).strip()[-200:]}")
        except Exception as e:  # noqa: BLE001
            res = (False, f"unshare failed: {e}")
    _probe_cache["result"] = res
    return res


def kernel_env(sandbox: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": sandbox,
        "TMPDIR": sandbox,
        "IPYTHONDIR": os.path.join(sandbox, ".ipython"),
        "MPLCONFIGDIR": os.path.join(sandbox, ".mpl"),
        "MPLBACKEND": "Agg",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "NBGRADER_EXECUTION": "autograde",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PREFLAB_SCALE": "tiny",
    }
    if os.environ.get("VIRTUAL_ENV"):
        env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
    return env


class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that puts its kernel in the sandbox described by ``CURRENT``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sb = CURRENT.get("dir")
        if sb:
            self.transport = "ipc"
            self.connection_file = os.path.join(sb, "kernel.json")
            self.ip = os.path.join(sb, "k")
        STARTED.append(self)

    async def _async_pre_start_kernel(self, **kw):
        sb = CURRENT.get("dir")
        if sb:
            kw["cwd"] = sb
            kw["env"] = kernel_env(sb)
        return await super()._async_pre_start_kernel(**kw)

    def write_connection_file(self, **kwargs) -> None:
        super().write_connection_file(**kwargs)
        if CURRENT.get("isolate"):
            os.chown(self.connection_file, CURRENT["uid"], CURRENT["gid"])

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if not CURRENT.get("isolate"):
            return cmd
        wrap = ["unshare", "--mount", "--net", "--", sys.executable, LAUNCHER,
                "--uid", str(CURRENT["uid"]), "--gid", str(CURRENT["gid"]), "--cwd", CURRENT["dir"]]
        for k, v in CURRENT.get("limits", {}).items():
            wrap += [f"--{k}", str(v)]
        for p in CURRENT.get("hide", []):
            wrap += ["--hide", p]
        return wrap + ["--"] + cmd

    def kill_now(self) -> None:
        """Kill the kernel process (used by the per-submission watchdog)."""
        prov = getattr(self, "provisioner", None)
        proc = getattr(prov, "process", None) if prov is not None else None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(os.getpgid(proc.pid), 9)
            except Exception:  # noqa: BLE001
                try:
                    proc.kill()
                except Exception:  # noqa: BLE001
                    pass
