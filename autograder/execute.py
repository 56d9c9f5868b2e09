"""How the grader executes what nbgrader specifies: student cells in the sandbox, tests beside it.

:class:`GradedExecute` is nbgrader's ``Execute`` preprocessor with three changes:

* the kernel starts in the submission's sandbox (:mod:`autograder.sandbox`), watched by a
  :class:`~autograder.sandbox.Watchdog`;
* a test cell (nbgrader ``grade`` and not ``solution``) is never sent to the kernel: its source,
  taken from solutions/ (the instructor's copy, hidden tests included), runs in a grader-side
  process (:mod:`autograder.checker`) that calls the student's functions in the kernel with
  plain data; the cell's output becomes the checks' report and its score, which nbgrader reads
  as partial credit (a number as the cell's result); a cell's calls share one execute
  request in the kernel (``preflab.wire.serve_session``), each call a request frame and a result
  frame on a unix socket in the sandbox's socket folder (an execute request per call costs about
  4 ms of Jupyter messaging, which was most of the cost of grading an exercise of many small calls);
* a locked cell that is not a test (imports, a model load) runs in the kernel and in the
  checker, so both sides have the names it defines.

A kernel that dies, or ignores an interrupt, no longer fails the whole notebook: the rest of
the student's cells are marked as not run, the remaining test cells still run (their calls fail
at once), and the score counts what passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import secrets
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Any as TAny

from preflab.wire import MAX_BYTES

from .checker import recv, send
from .sandbox import SandboxKernelManager, SandboxSpec, Watchdog

CHECKER = str(Path(__file__).with_name("checker.py"))
#: The most output one student cell may leave in the graded notebook.
MAX_CELL_OUTPUT = 2 * 1024 * 1024
#: The least time a locked cell that is not a test (the course's imports and model loads) gets in the
#: kernel, whatever ``--timeout`` says: it is the course's code, not the student's, and on a busy
#: machine loading the tiny GPT-2 has taken more than ten times its idle 3 s. A cell's own
#: ``metadata.preflab.timeout`` raises it further; the notebook's time limit still bounds the total.
SETUP_TIMEOUT = 120.0


@dataclass
class SourceCell:
    """A cell of the instructor's notebook (solutions/), by nbgrader grade id."""

    grade_id: str
    cell_type: str
    source: str
    locked: bool
    grade: bool
    solution: bool
    points: float
    timeout: float | None = None

    @property
    def is_test(self) -> bool:
        return self.cell_type == "code" and self.grade and not self.solution


def source_cells(nb: dict) -> dict[str, SourceCell]:
    out = {}
    for c in nb.get("cells", []):
        g = (c.get("metadata") or {}).get("nbgrader") or {}
        if not g.get("grade_id"):
            continue
        src = c.get("source", "")
        out[g["grade_id"]] = SourceCell(
            grade_id=g["grade_id"], cell_type=c.get("cell_type"), source="".join(src) if isinstance(src, list) else src,
            locked=bool(g.get("locked")), grade=bool(g.get("grade")), solution=bool(g.get("solution")),
            points=float(g.get("points") or 0), timeout=((c.get("metadata") or {}).get("preflab") or {}).get("timeout"))
    return out


@dataclass
class ExecJob:
    """What :class:`GradedExecute` needs for one submission (passed explicitly, per job)."""

    sandbox: SandboxSpec
    source: dict[str, SourceCell]
    names: list[str]
    """The names the student's answer cells define: proxies on the grader's side."""
    cell_timeout: float
    notebook_timeout: float
    checker_log: str
    results: dict = field(default_factory=dict)
    """Filled per test cell: the checker's report (checks, errors, score)."""
    events: list = field(default_factory=list)
    """What went wrong in the kernel, in order: dicts with kind (timeout, dead, interrupt
    ignored, watchdog), cell and detail."""


def _stream(text: str) -> dict:
    return new_output("stream", name="stdout", text=text)


def render(report: dict) -> list:
    """The outputs of a graded test cell: a readable report and the score, as nbgrader reads it."""
    lines = []
    for r in report.get("results", []):
        pts = f" ({(r['points'] or 0) if r['ok'] else 0:g}/{r['points'] or 0:g})"
        mark = "PASS" if r["ok"] else "FAIL"
        msg = "" if r["ok"] else ": " + (f"expected {r['expected']}, " if r.get("expected") else "") + r["message"]
        lines.append(f"[{mark}] {'hidden: ' if r['hidden'] and not r['name'].startswith('hidden') else ''}{r['name']}{pts}{msg}")
    for e in report.get("errors", []):
        names = ", ".join(e.get("checks") or []) or "the checks of this statement"
        lines.append(f"[ERROR] {names}: {e['message']}")
    for w in report.get("warnings", []):
        lines.append(f"[WARNING] the notebook's code warned: {w}")
    lines.append(f"Score: {report.get('score', 0):g} of {report.get('max_score', 0):g}")
    return [_stream("\n".join(lines) + "\n"),
            new_output("execute_result", data={"text/plain": f"{report.get('score', 0):g}"}, execution_count=None)]


class GradedExecute(Execute):
    """nbgrader's Execute, grading as the module docstring says. ``job`` is set per submission."""

    job = TAny(None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checker = None
        self.watchdog = None
        self.dead = ""
        self._out_bytes: dict[int, int] = {}
        self._kernel_lock = asyncio.Lock()
        self.timeout_func = self.timeout_for

    def timeout_for(self, cell) -> float:
        """Seconds a cell may run in the kernel: ``--timeout`` for the student's cells, at least
        :data:`SETUP_TIMEOUT` for the course's locked cells (their source comes from the release)."""
        gid = (cell.metadata.get("nbgrader") or {}).get("grade_id")
        src = self.job.source.get(gid) if gid else None
        if src is not None and src.locked and not src.is_test:
            return max(float(self.job.cell_timeout), float(src.timeout or SETUP_TIMEOUT))
        return float(self.job.cell_timeout)

    # ---------------------------------------------------------------- kernel and checker
    def create_kernel_manager(self):
        self.km = SandboxKernelManager(kernel_name=self.kernel_name or "python3", config=self.config,
                                       spec=self.job.sandbox)
        return self.km

    async def async_start_new_kernel_client(self):
        self._start_checker()
        kc = await super().async_start_new_kernel_client()
        self.watchdog = Watchdog(self.km, self.job.sandbox.limits, self.job.notebook_timeout)
        self.watchdog.start()
        return kc

    def _start_checker(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   PREFLAB_SCALE="tiny", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("PYTHONSTARTUP", None)
        log = open(self.job.checker_log, "ab")
        self.checker = subprocess.Popen([sys.executable, CHECKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log, env=env, cwd=str(Path(self.job.sandbox.inbox).parent))
        log.close()
        send(self.checker.stdin, {"op": "start", "inbox": self.job.sandbox.inbox, "names": self.job.names})

    async def _async_cleanup_kernel(self) -> None:
        try:
            await super()._async_cleanup_kernel()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.km is not None:
            self.km.kill_now()
        if self.checker is not None and self.checker.poll() is None:
            try:
                send(self.checker.stdin, {"op": "stop"})
                self.checker.wait(timeout=5)
            except Exception:  # noqa: BLE001
                self.checker.kill()

    def _event(self, kind: str, cell: str, detail: str) -> None:
        self.job.events.append(dict(kind=kind, cell=cell, detail=detail))

    def _mark_dead(self, why: str, cell: str) -> None:
        if self.watchdog is not None and self.watchdog.reason:
            why = self.watchdog.reason
        if not self.dead:
            self.dead = why
            self._event("dead", cell, why)
        if self.km is not None:
            self.km.kill_now()

    # ---------------------------------------------------------------- a cell's calls, over one socket
    async def _open_session(self) -> dict:
        """Start ``preflab.wire.serve_session`` in the kernel (one execute request for all of a
        cell's calls) and accept its connection on a fresh unix socket in the sandbox's socket
        folder. Waits for the kernel: the lock is held while the kernel runs a cell."""
        await self._kernel_lock.acquire()  # released by _close_session
        try:
            return await self._start_session()
        except BaseException:
            self._kernel_lock.release()
            raise

    async def _start_session(self) -> dict:
        loop = asyncio.get_running_loop()
        path = os.path.join(self.job.sandbox.sock_dir, f"serve-{secrets.token_hex(8)}.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        session = {"conn": None, "msg_id": None, "broken": ""}
        try:
            srv.bind(path)
            os.chmod(path, 0o777)  # the kernel's uid connects (a throwaway uid when the grader is root)
            srv.listen(1)
            srv.setblocking(False)
            session["msg_id"] = self.kc.execute(
                f"__import__('preflab.wire', fromlist=['serve_session']).serve_session({path!r})",
                silent=False, store_history=False, allow_stdin=False, stop_on_error=False)
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            deadline = time.monotonic() + 30
            while not accept.done():
                await asyncio.wait({accept}, timeout=0.5)
                if accept.done():
                    break
                if self.dead or await self._kernel_gone() or time.monotonic() > deadline:
                    accept.cancel()
                    session["broken"] = "the notebook did not open the grader's channel (did it replace preflab.wire?)"
                    return session
            conn, _ = accept.result()
            conn.setblocking(False)
            session["conn"] = conn
        except OSError as e:
            session["broken"] = f"the grader's channel to the notebook failed: {e}"
        finally:
            srv.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        return session

    async def _read_frame(self, conn) -> str | None:
        loop = asyncio.get_running_loop()

        async def exact(n: int) -> bytes | None:
            buf = bytearray()
            while len(buf) < n:
                chunk = await loop.sock_recv(conn, min(n - len(buf), 1 << 20))
                if not chunk:
                    return None
                buf += chunk
            return bytes(buf)

        head = await exact(4)
        if head is None:
            return None
        (size,) = struct.unpack(">I", head)
        if size > MAX_BYTES + 1024:
            raise ValueError(f"a result of {size >> 20} MiB (the limit is {MAX_BYTES >> 20} MiB)")
        body = await exact(size)
        return None if body is None else body.decode("utf-8", errors="replace")

    async def _kernel_gone(self) -> bool:
        """True once the kernel has died or the watchdog has fired."""
        return not await self.kc.is_alive() or bool(self.watchdog is not None and self.watchdog.reason)

    async def _drain_iopub(self) -> None:
        """Discard what the kernel printed meanwhile (a call's output is not the student's to show)."""
        for _ in range(10_000):
            try:
                await self.kc.get_iopub_msg(timeout=0)
            except (queue.Empty, asyncio.TimeoutError):
                return

    async def _session_call(self, session: dict, path: str, timeout: float) -> dict:
        """One call of the test cell: the request's path out, the result's text back, within ``timeout``
        (then an interrupt, and 5 s more before the kernel is stopped)."""
        if self.dead:
            return {"op": "result", "failure": f"not run: {self.dead}"}
        if session["broken"]:
            return {"op": "result", "failure": session["broken"]}
        loop = asyncio.get_running_loop()
        conn = session["conn"]
        data = path.encode()
        try:
            await loop.sock_sendall(conn, struct.pack(">I", len(data)) + data)
        except OSError:
            session["broken"] = "the notebook closed the grader's channel"
            return {"op": "result", "failure": session["broken"]}
        reading = asyncio.ensure_future(self._read_frame(conn))
        deadline, interrupted = time.monotonic() + timeout, False
        while not reading.done():
            await asyncio.wait({reading}, timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            if reading.done():
                break
            await self._drain_iopub()
            if await self._kernel_gone():
                reading.cancel()
                self._mark_dead("the kernel died during a call", "test")
                return {"op": "result", "failure": f"the kernel died while the grader called the function ({self.dead})"}
            if time.monotonic() >= deadline:
                if interrupted:
                    reading.cancel()
                    self._mark_dead(f"a call ran past {timeout:g} s and ignored the interrupt", "test")
                    return {"op": "result", "failure": f"the call ran past {timeout:g} s and ignored the interrupt: "
                                                       "the kernel was stopped"}
                interrupted = True
                await self.km.interrupt_kernel()
                deadline = time.monotonic() + 5
        try:
            text = reading.result()
        except (OSError, ValueError) as e:
            text, session["broken"] = None, f"the notebook's answer could not be read: {e}"
        if text is None:
            session["broken"] = session["broken"] or "the notebook closed the grader's channel"
            return {"op": "result", "failure": session["broken"]}
        if interrupted:
            return {"op": "result", "failure": f"the call ran past {timeout:g} s and was interrupted"}
        return {"op": "result", "text": text}

    async def _close_session(self, session: dict) -> None:
        """End the session's execute request and wait for the kernel to be idle again."""
        try:
            conn = session["conn"]
            if conn is not None:
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(conn, struct.pack(">I", 0)), 5)
                conn.close()
            msg_id = session["msg_id"]
            if msg_id is None or self.dead:
                return
            deadline, interrupted = time.monotonic() + 10, False
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if interrupted:
                        self._mark_dead("the kernel did not finish the grader's calls", "test")
                        return
                    interrupted = True
                    await self.km.interrupt_kernel()
                    deadline = time.monotonic() + 5
                    continue
                try:
                    msg = await self.kc.get_iopub_msg(timeout=min(1.0, remaining))
                except (queue.Empty, asyncio.TimeoutError):
                    if await self._kernel_gone():
                        self._mark_dead("the kernel died during a call", "test")
                        return
                    continue
                if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg.get("msg_type") == "status"
                        and msg.get("content", {}).get("execution_state") == "idle"):
                    break
            with contextlib.suppress(queue.Empty, asyncio.TimeoutError):
                while (await self.kc.get_shell_msg(timeout=5)).get("parent_header", {}).get("msg_id") != msg_id:
                    pass
        finally:
            self._kernel_lock.release()

    async def run_checker(self, cell: SourceCell, kind: str) -> dict:
        """Send one cell to the checker, serve its calls, return its report."""
        loop = asyncio.get_running_loop()
        timeout = float(cell.timeout or self.job.cell_timeout)
        try:
            send(self.checker.stdin, {"op": "cell", "kind": kind, "grade_id": cell.grade_id, "source": cell.source,
                                      "points": cell.points, "timeout": timeout})
            session = None  # a cell's calls share one execute request (see _open_session)
            try:
                while True:
                    msg = await loop.run_in_executor(None, recv, self.checker.stdout)
                    if msg is None:
                        raise RuntimeError("the checker stopped")
                    if msg.get("op") == "call":
                        if session is None:  # a setup cell's first call waits here until the kernel has run it
                            session = await self._open_session()
                        reply = await self._session_call(session, str(msg["path"]), float(msg.get("timeout") or timeout))
                        send(self.checker.stdin, reply)
                    elif msg.get("op") == "done":
                        return msg
            finally:
                if session is not None:
                    await self._close_session(session)
        except Exception as e:  # noqa: BLE001 - a broken checker is the grader's fault: say so
            self.log.error("checker failed on %s: %s", cell.grade_id, e)
            return {"results": [], "errors": [dict(kind="grader", message=f"grader error: {type(e).__name__}: {e}",
                                                   checks=[], hidden=False)],
                    "score": 0.0, "max_score": cell.points, "grader_error": True, "output": "", "warnings": []}

    # ---------------------------------------------------------------- cells
    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type != "code":
            return cell
        gid = (cell.metadata.get("nbgrader") or {}).get("grade_id")
        src = self.job.source.get(gid) if gid else None
        if src is not None and src.is_test:
            report = await self.run_checker(src, "test")
            self.job.results[gid] = report
            cell.outputs = render(report)
            cell.execution_count = execution_count
            self.nb.cells[cell_index] = cell
            return cell
        if self.dead:
            cell.outputs = [_stream(f"[not run: {self.dead}]\n")]
            return cell
        # A locked cell that is not a test (imports, a model load) runs on both sides, at once.
        setup = asyncio.ensure_future(self.run_checker(src, "setup")) if src is not None and src.locked else None
        try:
            async with self._kernel_lock:
                cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        except DeadKernelError:
            self._mark_dead(f"the kernel died in {gid or f'cell {cell_index}'} (os._exit, a crash, or a limit)",
                            gid or f"cell {cell_index}")
            cell.outputs.append(new_output("error", ename="DeadKernelError", evalue=self.dead, traceback=[]))
        except CellTimeoutError:
            self._mark_dead(f"{gid or f'cell {cell_index}'} ran past {self.timeout_for(cell):g} s and ignored the interrupt",
                            gid or f"cell {cell_index}")
            cell.outputs.append(new_output("error", ename="CellTimeoutError", evalue=self.dead, traceback=[]))
        else:
            if any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError" for o in cell.outputs):
                self._event("timeout", gid or f"cell {cell_index}", f"ran past {self.timeout_for(cell):g} s and was interrupted")
            if self.watchdog is not None and self.watchdog.reason:
                self._mark_dead(self.watchdog.reason, gid or f"cell {cell_index}")
        self._limit_output(cell)
        if setup is not None:
            report = await setup
            if report.get("errors"):
                self.log.warning("locked cell %s failed in the checker: %s", gid, report["errors"][0]["message"])
        return cell

    def output(self, outs, msg, display_id, cell_index):
        """nbclient's output handler, with a cap on what one cell may accumulate in memory."""
        used = self._out_bytes.get(cell_index, 0)
        if used > MAX_CELL_OUTPUT:
            return None
        size = len(json.dumps(msg.get("content", {}), default=str))
        self._out_bytes[cell_index] = used + size
        if used + size > MAX_CELL_OUTPUT:
            outs.append(_stream(f"[output truncated: more than {MAX_CELL_OUTPUT >> 20} MiB]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)

    # nbconvert calls the synchronous wrappers, which nbclient binds to its own coroutines: rebind.
    start_new_kernel_client = run_sync(async_start_new_kernel_client)
    execute_cell = run_sync(async_execute_cell)
    _cleanup_kernel = run_sync(_async_cleanup_kernel)

    def _limit_output(self, cell) -> None:
        total, kept = 0, []
        for o in cell.outputs:
            size = len(json.dumps(o, default=str))
            if total + size > MAX_CELL_OUTPUT:
                kept.append(_stream(f"[output truncated: more than {MAX_CELL_OUTPUT >> 20} MiB]\n"))
                break
            total += size
            kept.append(o)
        cell.outputs = kept
