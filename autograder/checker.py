"""The grader's side of a graded notebook: ``python -m autograder.checker`` (one process per notebook).

The student's notebook runs in a sandboxed kernel; its test cells never do. The execute stage
(:mod:`autograder.execute`) sends each test cell's source, as the instructor wrote it in
solutions/ (hidden tests included), to this process, which runs it with :mod:`preflab.selfcheck`
in grader mode. Every name the student's cells define is a :class:`Remote` here: calling it
writes the arguments as plain data (:mod:`preflab.wire`) into the job's inbox, the execute stage
runs the function in the kernel, and the result comes back as plain data. Expected values,
reference implementations and the check helper live only in this process: a student cell that
patches ``selfcheck``, numpy, torch or builtins changes nothing here, and nothing the student's
process made is ever unpickled or called here.

Locked cells that are not tests (the imports cell, a cell that loads the model) run here too, so
the test code finds the same names. A test cell runs statement by statement: a statement that
raises (a student function that raised, or a result the checks could not read) costs the checks
it would have made, and the cell goes on.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and a JSON object.
In: ``{"op": "start", "inbox", "names"}``, ``{"op": "cell", "kind": "setup"|"test", "grade_id",
"source", "points", "timeout"}``, ``{"op": "result", "text"|"failure"}`` (the answer to a call),
``{"op": "stop"}``. Out: ``{"op": "call", "fn", "path", "timeout"}`` and ``{"op": "done", ...}``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import secrets
import struct
import sys
import time

HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
CHECKS = ("close", "equal", "true", "finite", "raises", "kind", "unchanged")


# ----------------------------------------------------------------------------- frames
def send(fh, obj: dict) -> None:
    data = json.dumps(obj, allow_nan=False).encode()
    fh.write(struct.pack(">I", len(data)) + data)
    fh.flush()


def _read_exactly(fh, n: int) -> bytes | None:
    """n bytes from a pipe (an unbuffered read returns what the pipe holds, often less), or None at EOF."""
    chunks, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(fh, limit: int = 128 * 1024 * 1024) -> dict | None:
    head = _read_exactly(fh, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > limit:
        raise ValueError(f"frame of {n} bytes")
    data = _read_exactly(fh, n)
    return None if data is None else json.loads(data)


# ----------------------------------------------------------------------------- the source of a test cell
def segments(source: str) -> list[tuple[bool, str, int]]:
    """(hidden, code, first line number) pieces of a test cell, split at nbgrader's markers."""
    out, cur, hidden, start = [], [], False, 1
    for i, line in enumerate(source.splitlines(), 1):
        mark = line.strip()
        if mark in (HIDDEN_BEGIN, HIDDEN_END):
            if cur:
                out.append((hidden, "\n".join(cur), start))
            cur, hidden, start = [], mark == HIDDEN_BEGIN, i + 1
            continue
        cur.append(line)
    if cur:
        out.append((hidden, "\n".join(cur), start))
    return out


def check_names(node: ast.AST) -> list[str]:
    """The names of the checks a statement would make (sc.close(..., name="...")), as written; the
    formatted parts of an f-string shown as "…"."""
    names = []
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CHECKS \
                and isinstance(n.func.value, ast.Name) and n.func.value.id == "sc":
            for kw in n.keywords:
                if kw.arg == "name":
                    if isinstance(kw.value, ast.Constant):
                        names.append(str(kw.value.value))
                    elif isinstance(kw.value, ast.JoinedStr):
                        names.append("".join(v.value if isinstance(v, ast.Constant) else "…" for v in kw.value.values))
    return names


def student_names(sources: list[str]) -> list[str]:
    """Names the student's answer cells define at top level (functions, classes, assignments)."""
    names: list[str] = []
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names += [t.id for t in targets if isinstance(t, ast.Name)]
    return sorted(set(names))


# ----------------------------------------------------------------------------- remote calls
class RemoteFailure(Exception):
    """The call did not come back: a timeout, a dead kernel, or a result that could not be read."""


class Channel:
    def __init__(self, out, inp, inbox: str):
        self.out, self.inp, self.inbox = out, inp, inbox
        self.timeout = 30.0
        self.calls = 0
        self.seconds = 0.0
        self.warnings: list[str] = []
        self.returned: set[str] = set()  # the student's functions that some call has returned from

    def request(self, payload: dict) -> dict:
        from preflab import wire

        text = wire.dumps(payload)
        name = f"req-{secrets.token_hex(8)}.json"
        fd = os.open(os.path.join(self.inbox, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)  # readable by the kernel whatever the grader's umask
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        t0 = time.monotonic()
        send(self.out, {"op": "call", "fn": payload["fn"], "path": os.path.join(self.inbox, name),
                        "timeout": self.timeout})
        reply = recv(self.inp)
        self.calls += 1
        self.seconds += time.monotonic() - t0
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.inbox, name))
        if reply is None or reply.get("op") != "result":
            raise SystemExit("the execute stage went away")
        if reply.get("failure"):
            raise RemoteFailure(reply["failure"])
        try:
            res = wire.loads(reply.get("text", ""))
        except wire.WireError as e:
            raise RemoteFailure(f"the notebook sent back a result the grader cannot read: {e}") from None
        if not isinstance(res, dict) or not isinstance(res.get("ok"), bool):
            raise RemoteFailure("the notebook sent back a malformed result")
        self.warnings += [str(w) for w in res.get("warnings") or []][:20]
        if res["ok"] and payload.get("mode") == "call":
            self.returned.add(payload["fn"])
        return res


class Remote:
    """A name the student defined, seen from the grader: calling it calls the student's function
    in the sandboxed kernel, with plain data in and out."""

    __slots__ = ("_name", "_channel")

    def __init__(self, name: str, channel: Channel):
        self._name, self._channel = name, channel

    def __preflab_remote__(self, args, kwargs, grad_wrt=(), return_inputs=False) -> dict:
        return self._channel.request({"fn": self._name, "mode": "call", "args": list(args), "kwargs": dict(kwargs),
                                      "grad_wrt": list(grad_wrt), "return_inputs": bool(return_inputs)})

    def __preflab_returned__(self) -> bool:
        """Whether a call of this function has returned a result (selfcheck.raises asks)."""
        return self._name in self._channel.returned

    def __preflab_value__(self):
        from preflab import selfcheck

        res = self._channel.request({"fn": self._name, "mode": "get"})
        if not res["ok"]:
            selfcheck._raise_from(res)
        return res.get("value")

    def __call__(self, *args, **kwargs):
        from preflab import selfcheck

        res = self.__preflab_remote__(args, kwargs)
        if not res["ok"]:
            try:
                selfcheck._raise_from(res)
            except Exception as e:
                e.preflab_function = self._name
                raise
        return res.get("value")

    def __repr__(self) -> str:
        return f"<the student's {self._name}>"


class Namespace(dict):
    """Test code's globals: the names it defines, then the student's (as :class:`Remote`), then builtins."""

    def __init__(self, remotes: dict):
        super().__init__()
        self._remotes = remotes

    def __missing__(self, key):
        if key in self._remotes:
            return self._remotes[key]
        raise KeyError(key)


# ----------------------------------------------------------------------------- running cells
def _describe(e: BaseException) -> tuple[str, str]:
    """(kind, message) of an exception a test statement raised, said for the student."""
    if isinstance(e, RemoteFailure):
        return "call failed", str(e)
    fn = getattr(e, "preflab_function", None)
    if fn:
        return "raised", f"{fn} raised {type(e).__name__}: {str(e)[:300]}"
    if isinstance(e, NameError):
        return "skipped", f"depends on an earlier step that failed ({e})"
    return "unreadable", f"the result could not be checked ({type(e).__name__}: {str(e)[:200]})"


def run_cell(source: str, kind: str, ns: Namespace, grader, channel: Channel, grade_id: str) -> dict:
    """Execute one cell's source statement by statement; return its checks, errors and output."""
    out = io.StringIO()
    errors: list[dict] = []
    start = len(grader.results)
    t0 = time.monotonic()
    calls0 = channel.calls
    pieces = segments(source) if kind == "test" else [(False, source, 1)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        for hidden, code, first in pieces:
            grader.hidden = hidden
            try:
                tree = ast.parse(code)
            except SyntaxError as e:
                errors.append(dict(hidden=hidden, kind="syntax", message=f"the test code does not parse: {e}", checks=[]))
                continue
            for stmt in tree.body:
                ast.increment_lineno(stmt, first - 1)
                try:
                    exec(compile(ast.Module([stmt], []), f"<{grade_id}>", "exec"), ns)  # noqa: S102 - instructor's code
                except Exception as e:  # noqa: BLE001
                    how, msg = _describe(e)
                    errors.append(dict(hidden=hidden, kind=how, message=msg, checks=check_names(stmt),
                                       line=stmt.lineno))
    grader.hidden = False
    return dict(results=grader.results[start:], errors=errors, output=out.getvalue()[-4000:],
                seconds=round(time.monotonic() - t0, 3), calls=channel.calls - calls0)


def score(results: list[dict], points: float) -> float:
    """Points of the checks that passed, capped at the cell's points."""
    got = sum(r["points"] or 0.0 for r in results if r["ok"])
    if abs(got - points) < 1e-4:  # points written to 6 decimals (1/3 as 0.333333) still add up
        got = points
    return round(min(max(got, 0.0), points), 6)


def main() -> None:
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    # Whatever the test code prints must never reach the protocol channel.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from preflab import selfcheck

    grader = selfcheck.grader_mode()
    start = recv(proto_in)
    if not start or start.get("op") != "start":
        return
    channel = Channel(proto_out, proto_in, start["inbox"])
    remotes = {n: Remote(n, channel) for n in start.get("names", [])}
    ns = Namespace(remotes)
    ns["__name__"] = "__main__"
    while True:
        msg = recv(proto_in)
        if msg is None or msg.get("op") == "stop":
            return
        if msg.get("op") != "cell":
            continue
        channel.timeout = float(msg.get("timeout") or 30)
        res = run_cell(msg["source"], msg.get("kind", "test"), ns, grader, channel, msg.get("grade_id", "cell"))
        res["op"] = "done"
        res["grade_id"] = msg.get("grade_id")
        if msg.get("kind") == "test":
            pts = float(msg.get("points") or 0)
            res["score"] = score(res["results"], pts)
            res["max_score"] = pts
            declared = sum(r["points"] or 0.0 for r in res["results"])
            res["undeclared"] = sum(1 for r in res["results"] if r["points"] is None)
            res["declared"] = round(declared, 6)
        res["warnings"] = channel.warnings[-20:]
        channel.warnings = []
        send(proto_out, res)


if __name__ == "__main__":
    main()
