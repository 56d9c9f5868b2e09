"""Runs as root inside ``unshare --mount --net``: hide paths, set limits, drop to a uid, exec the kernel.

Standard library only: it must not import anything from the paths it is about to hide.
"""

import argparse
import ctypes
import os
import resource
import sys

MS_BIND = 4096


def _mount(libc, src, target, fstype, flags, data):
    if libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                  flags, data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount on {target}: {os.strerror(err)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uid", type=int, required=True)
    ap.add_argument("--gid", type=int, required=True)
    ap.add_argument("--cwd", required=True)
    ap.add_argument("--hide", action="append", default=[])
    ap.add_argument("--nproc", type=int, default=0)
    ap.add_argument("--memory-mb", type=int, default=0)
    ap.add_argument("--fsize-mb", type=int, default=0)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd

    libc = ctypes.CDLL(None, use_errno=True)
    for path in a.hide:
        if os.path.isdir(path):
            _mount(libc, "tmpfs", path, "tmpfs", 0, "size=4k,mode=000")
        elif os.path.exists(path):
            _mount(libc, "/dev/null", path, None, MS_BIND, None)
    if a.nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (a.nproc, a.nproc))
    if a.memory_mb:
        m = a.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (m, m))
    if a.fsize_mb:
        f = a.fsize_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (f, f))
    os.chdir(a.cwd)
    # Drop to the unprivileged uid with setpriv (util-linux): it clears the supplementary
    # groups and capabilities, then execs the kernel.
    drop = ["setpriv", f"--reuid={a.uid}", f"--regid={a.gid}", "--clear-groups", "--"]
    if a.probe:
        check = ("import os, sys\n"
                 "assert os.getuid() != 0\n"
                 "for p in sys.argv[1:]:\n"
                 "    try:\n"
                 "        os.listdir(p)\n"
                 "    except PermissionError:\n"
                 "        continue\n"
                 "    sys.exit(p + ' is still readable')\n")
        os.execvp("setpriv", drop + [sys.executable, "-c", check] + a.hide)
    os.execvp("setpriv", drop + cmd)


if __name__ == "__main__":
    main()
