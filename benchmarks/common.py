"""Shared helpers of the benchmarks: the machine, the load, medians, timers and the table."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on (CPU model, cores, thread count, versions, load)."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": _memory_gb(),
        "load_average": load_average(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for mod in ("transformers", "trl", "nbgrader"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not reported
            info[mod] = None
    return info


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:  # pragma: no cover
        pass
    return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rss_mb() -> float:
    """This process's current resident set size in MB (Linux; falls back to the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB since it started (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t["s"]`` is the wall time in seconds."""
    t = {"s": None}
    t0 = time.perf_counter()
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - t0


def row(benchmark: str, what: str, value, target: str = "", met: bool | None = None) -> dict:
    """One line of the printed table. ``met`` is None where there is no target."""
    return {"benchmark": benchmark, "what": what, "value": value, "target": target, "met": met}


def format_table(rows: list[dict]) -> str:
    head = ("benchmark", "what", "value", "target", "met?")
    body = [(r["benchmark"], r["what"], str(r["value"]), r["target"] or "",
             "" if r["met"] is None else ("yes" if r["met"] else "NO")) for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body])
