"""Start one graded kernel inside bubblewrap: ``python -m autograder._launch SPEC_JSON -- CMD...``.

Standard library only, and every import at the top: as root this process drops to a throwaway
uid, after which it may no longer read the interpreter's own files.

SPEC_JSON (written by :mod:`autograder.sandbox`) says what the kernel may see and use:
``ro`` (host path, sandbox path) pairs bound read-only; ``rw`` pairs bound read-write (the
kernel's socket folder only); ``env``; ``home`` and ``tmp_mb`` (private tmpfs sizes);
``limits`` (rlimits: ``nproc``, ``as_mb``, ``fsize_mb``, ``nofile``, ``cpu_s``); ``uid`` (used
only when run as root); ``log`` (where the kernel's own stdout/stderr go, never the
instructor's terminal).

Everything not named is absent: the sandbox's root is an empty tmpfs, with no network (a
network namespace of its own), its own process tree (a pid namespace: nothing it starts
outlives it), and ``--die-with-parent`` so it dies with the grader.

As an ordinary user bubblewrap makes an unprivileged user namespace (further ones disabled
inside). As root it runs privileged and the kernel is started through ``setpriv`` under a
fresh uid that owns nothing on the host, so the process limit (RLIMIT_NPROC, counted per uid)
bounds this one submission.
"""

import json
import os
import resource
import sys


def _parents(dst: str, made: set) -> list:
    """``--dir`` options (mode 0755) for every missing parent of a mount point: bubblewrap would
    otherwise copy the host's modes, and a 0700 /root would lock the kernel out of the
    interpreter bound below it."""
    chain, p = [], os.path.dirname(dst)
    while p not in ("/", ""):
        chain.append(p)
        p = os.path.dirname(p)
    out = []
    for d in reversed(chain):
        if d not in made:
            made.add(d)
            out += ["--perms", "0755", "--dir", d]
    return out


def bwrap_command(spec: dict, cmd: list, root: bool) -> list:
    """The bubblewrap command line for ``spec`` (see the module docstring)."""
    args = [spec.get("bwrap", "bwrap"), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--clearenv"]
    if not root:
        args += ["--unshare-user", "--disable-userns"]
    home, tmp_mb = spec["home"], int(spec.get("tmp_mb", 256))
    # /proc, /dev and /tmp first: a bind below /tmp must come after the tmpfs, or it is hidden
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp"]
    made: set = {"/tmp", "/proc", "/dev"}
    for src, dst in spec.get("ro", []):
        args += _parents(dst, made) + ["--ro-bind", src, dst]
    for src, dst in spec.get("rw", []):
        args += _parents(dst, made) + ["--bind", src, dst]
    for link, target in (("/bin", "usr/bin"), ("/sbin", "usr/sbin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64")):
        if os.path.islink(link):
            args += ["--symlink", target, link]
    args += _parents(home, made) + ["--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", home]
    for k, v in spec.get("env", {}).items():
        args += ["--setenv", k, v]
    args += ["--chdir", spec.get("cwd", home)]
    if root:
        uid = str(int(spec["uid"]))
        cmd = ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"] + cmd
    return args + ["--"] + cmd


def _limit(name: str, value: int) -> None:
    resource.setrlimit(name, (value, value))


def main(argv: list) -> None:
    if "--" not in argv:
        sys.exit("usage: python -m autograder._launch SPEC_JSON -- CMD ...")
    k = argv.index("--")
    spec, cmd = json.loads(argv[0]), argv[k + 1:]
    root = os.geteuid() == 0
    lim = spec.get("limits", {})
    if lim.get("nproc"):
        _limit(resource.RLIMIT_NPROC, int(lim["nproc"]))
    if lim.get("as_mb"):
        _limit(resource.RLIMIT_AS, int(lim["as_mb"]) << 20)
    if lim.get("fsize_mb"):
        _limit(resource.RLIMIT_FSIZE, int(lim["fsize_mb"]) << 20)
    if lim.get("nofile"):
        _limit(resource.RLIMIT_NOFILE, int(lim["nofile"]))
    if lim.get("cpu_s"):
        _limit(resource.RLIMIT_CPU, int(lim["cpu_s"]))
    _limit(resource.RLIMIT_CORE, 0)
    if spec.get("log"):
        fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    full = bwrap_command(spec, cmd, root)
    os.execvp(full[0], full)


if __name__ == "__main__":
    main(sys.argv[1:])
