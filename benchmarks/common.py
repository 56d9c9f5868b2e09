"""Shared helpers of the benchmarks: the machine, the load, interleaved rounds, per-round ratios,
medians, timers and the table.

On a shared machine the load drifts while a benchmark runs. Two rules keep the comparisons fair:

* every variant runs once per ROUND, in an order that changes from round to round
  (:func:`round_orders`), so a load change hits all variants alike instead of all runs of one;
* the figure reported is the median over rounds of the PER-ROUND RATIO to the baseline
  (:func:`ratio_summary`), in wall-clock and in CPU seconds, never a ratio of two medians
  taken at different times. The spread (min, max) over rounds says how far to trust it.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

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


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_flags() -> dict:
    """Which of the instruction-set extensions that matter to torch's CPU kernels the CPU has."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:  # pragma: no cover
        return {}
    return {f: f in flags for f in ISA_FLAGS}


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, ISA flags, thread counts, versions, load."""
    import torch

    cpu_capability = None
    try:
        cpu_capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        pass
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa_flags": cpu_flags(),
        "torch_cpu_capability": cpu_capability,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
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


def machine_line(m: dict) -> str:
    """One printable line: CPU, cores, ISA, threads, versions."""
    isa = ", ".join(f for f, on in (m.get("isa_flags") or {}).items() if on and f in ("avx2", "avx512f", "amx_bf16"))
    return (f"{m['cpu']}, {m['cores']} cores ({isa or 'no avx2/avx512f'}; torch CPU capability "
            f"{m.get('torch_cpu_capability')}), torch {m['torch']} with {m['torch_threads']} threads "
            f"(OMP_NUM_THREADS={m.get('OMP_NUM_THREADS')}), transformers {m.get('transformers')}, trl {m.get('trl')}"
            f"{', ' + m['cuda'] if m.get('cuda') else ''}")


# ----------------------------------------------------------------------------- interleaved rounds
def round_orders(names, rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of the variants in each round: one seeded shuffle, then rotated by one place per
    round (a Latin square), so every variant runs once per round and, over ``len(names)`` rounds,
    once in every position (first in a round, last, ...)."""
    base = list(names)
    random.Random(seed).shuffle(base)
    k = len(base)
    return [base[r % k:] + base[: r % k] for r in range(rounds)]


def interleaved(variants: dict[str, Callable[[], dict]], rounds: int, seed: int = 0,
                log: Callable[[str], None] | None = None) -> dict:
    """Run every variant once per round, in :func:`round_orders` order, ``rounds`` times.

    Each variant is a zero-argument callable returning a dict of measurements. Returns
    ``{"order": [[names of round 0], ...], "runs": {name: [result of round 0, ...]}}``; each result
    gains ``round``, ``position`` and the load average just before it ran."""
    orders = round_orders(variants, rounds, seed)
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for r, order in enumerate(orders):
        for pos, name in enumerate(order):
            load = load_average()
            res = dict(variants[name]())
            res.update(round=r, position=pos, load_average_before=load)
            runs[name].append(res)
            if log is not None and "seconds" in res:
                log(f"  {name}: {res['seconds']:.1f} s wall, {res.get('cpu_s') or 0:.1f} CPU-s")
        if log is not None:
            log(f"round {r + 1}/{rounds} done (order {', '.join(order)}; load {load_average()})")
    return {"order": orders, "runs": runs}


def per_round_ratios(runs: dict[str, list[dict]], name: str, baseline: str, key: str,
                     higher_is_better: bool = True) -> list[float]:
    """Round by round, how many times better ``name`` did than ``baseline`` on ``key``:
    ``name/baseline`` for a rate (pairs/s), ``baseline/name`` for a time (seconds).
    Rounds where either value is missing or zero are skipped."""
    by_round = {r["round"]: r.get(key) for r in runs[baseline]}
    out = []
    for r in runs[name]:
        a, b = r.get(key), by_round.get(r["round"])
        if not a or not b:
            continue
        out.append(a / b if higher_is_better else b / a)
    return out


def ratio_summary(ratios: list[float]) -> dict:
    """Median, min, max and the relative spread ((max - min) / median) of per-round ratios."""
    if not ratios:
        return {"median": None, "min": None, "max": None, "spread": None, "rounds": 0, "ratios": []}
    med = statistics.median(ratios)
    return {"median": med, "min": min(ratios), "max": max(ratios),
            "spread": (max(ratios) - min(ratios)) / med if med else None, "rounds": len(ratios),
            "ratios": list(ratios)}


def fmt_ratio(s: dict) -> str:
    """``1.47x [1.40-1.52]``: the median per-round ratio and its range over rounds."""
    if s.get("median") is None:
        return "n/a"
    if s["rounds"] == 1:
        return f"{s['median']:.2f}x (1 round)"
    return f"{s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]"


def children_cpu() -> float:
    """CPU seconds (user + system) of finished, waited-for child processes and their descendants."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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
