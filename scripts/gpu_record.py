"""The GPU record: every lesson (and every exercise's solution) at both scales, one JSON file.

    python scripts/gpu_record.py --out build/gpu_record.json            # everything, tiny then gpt2
    python scripts/gpu_record.py --scales gpt2 --only 00 07 --budget-s 780

For each scale it sets ``PREFLAB_SCALE`` and runs each notebook in a fresh kernel with the course's
runner (``tools.course.run_lesson``, time profile on). Per notebook it records the status, the runtime,
where the time went, the peak host memory, the peak GPU memory (``torch.cuda.max_memory_allocated`` in the
kernel) and every claim with its numbers, its verdict and whether it was asserted at that scale. Before
the GPT-2 runs it builds (or finds in the cache) the GPT-2 base and SFT checkpoints once and records how
long that took, so each lesson's runtime is that of a learner whose finetune is already cached.

The JSON is rewritten after every notebook, so a run stopped by its time limit keeps what it measured;
``--budget-s`` starts no notebook once that many seconds have passed. Where GPT-2 cannot be downloaded
(this script's CPU trial), ``--random-gpt2`` points ``PREFLAB_GPT2_PATH`` at a small GPT-2-architecture
model with random weights (the course's recipes then build its base and SFT in about a minute on a CPU):
the code paths run, the numbers mean nothing.
The README's Colab section quotes the record of a real run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def notebooks(lessons: Path, solutions: Path | None, only: list[str] | None) -> list[Path]:
    from tools.course import find_lessons

    paths = find_lessons(lessons, only)
    if solutions is not None:
        for nb in sorted(solutions.glob("ex*/ex*.ipynb")):
            if not only or nb.name[2:4] in only:
                paths.append(nb)
    return paths


def random_gpt2(where: Path) -> None:
    """A 2-layer GPT-2 with random weights and the tiny tokenizer, for a CPU trial."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from preflab.model import load_tokenizer

    tok = load_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_layer=2, n_embd=64, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    os.environ["PREFLAB_GPT2_PATH"] = str(where)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/gpu_record.json", type=Path)
    ap.add_argument("--scales", nargs="+", default=["tiny", "gpt2"], choices=["tiny", "gpt2"])
    ap.add_argument("--only", nargs="+", help="lesson or exercise numbers, e.g. 00 07")
    ap.add_argument("--no-exercises", action="store_true", help="lessons only")
    ap.add_argument("--lessons", type=Path, default=ROOT / "lessons",
                    help="the lessons folder (they write manifests to ../build; a copy keeps a trial apart)")
    ap.add_argument("--solutions", type=Path, default=ROOT / "solutions", help="the exercises' solutions folder")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--budget-s", type=float, default=None, help="start no notebook after this many seconds")
    ap.add_argument("--random-gpt2", action="store_true", help="a small random GPT-2 (CPU trial; numbers mean nothing)")
    args = ap.parse_args(argv)

    import preflab.model as pm
    from benchmarks.common import machine
    from tools.course import run_lesson

    t_start = time.perf_counter()
    os.environ.setdefault("PREFLAB_CACHE", str(args.out.parent.resolve() / "gpt2-cache"))
    if args.random_gpt2:
        random_gpt2(Path(tempfile.mkdtemp(prefix="gpt2-random-")))
    record = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
              "random_gpt2": args.random_gpt2, "scales": {s: [] for s in args.scales}, "gpt2_build": None,
              "stopped_early": False}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        record["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        args.out.write_text(json.dumps(record, indent=2) + "\n")

    for scale in args.scales:
        os.environ["PREFLAB_SCALE"] = scale
        if scale == "gpt2":
            t = time.perf_counter()
            pm.load_gpt2_sft()
            record["gpt2_build"] = {"seconds": round(time.perf_counter() - t, 1), "base": dict(pm.GPT2_BASE),
                                    "sft": dict(pm.GPT2_SFT), "cache": os.environ["PREFLAB_CACHE"]}
            save()
        out = args.out.parent / f"gpu_record_{scale}"
        for path in notebooks(args.lessons, None if args.no_exercises else args.solutions, args.only):
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                record["stopped_early"] = True
                break
            r = run_lesson(path, out, timeout=args.timeout, profile=True)
            record["scales"][scale].append({
                "notebook": f"{path.parent.name}/{path.name}", "status": r.status, "runtime_s": round(r.runtime_s, 1),
                "peak_host_mb": round(r.peak_mb), "gpu_peak_mb": r.profile.get("gpu_peak_mb"),
                "time": {k: v for k, v in r.profile.items() if k != "gpu_peak_mb"},
                "claims": r.claims, "error": r.error})
            print(f"{scale:4s} {path.name:45s} {r.status:7s} {r.runtime_s:6.1f} s  "
                  f"gpu {r.profile.get('gpu_peak_mb')} MiB  claims "
                  f"{sum(c['status'] == 'PASS' for c in r.claims)}/{len(r.claims)}", flush=True)
            save()
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
