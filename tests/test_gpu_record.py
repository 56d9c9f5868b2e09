"""The GPU record script (scripts/gpu_record.py), tried on the CPU as it will run on a GPU: lesson 00 at
both scales, GPT-2 replaced by a small random GPT-2 (no download here). About 90 s."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_record_runs_every_scale_and_writes_what_it_measured(tmp_path):
    out = tmp_path / "record.json"
    # a copy of the lessons: lesson 00 writes ../build/manifests/00_tour.json and reads it back, which another
    # run of lesson 00 in the repository (tests/test_lessons.py, in the other worker) must not overwrite
    shutil.copytree(ROOT / "lessons", tmp_path / "lessons")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFLAB_SCALE", "PREFLAB_GPT2_PATH")}
    env.update(PREFLAB_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "scripts/gpu_record.py", "--out", str(out), "--only", "00", "--no-exercises",
                        "--random-gpt2", "--timeout", "300", "--lessons", str(tmp_path / "lessons")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["random_gpt2"] is True and rec["machine"]["cuda"] is None and not rec["stopped_early"]
    assert rec["gpt2_build"]["seconds"] > 0 and rec["gpt2_build"]["base"]["steps"] == 300
    for scale, asserted in (("tiny", True), ("gpt2", False)):
        [row] = rec["scales"][scale]
        assert row["notebook"] == "lessons/00_setup_and_tour.ipynb" and row["status"] == "passed", row
        assert row["runtime_s"] > 0 and row["peak_host_mb"] > 0 and row["gpu_peak_mb"] is None
        assert row["time"]["sampling"] > 0 and len(row["time"]["slowest_cells"]) == 3
        assert row["claims"] and all(c["asserted"] is asserted for c in row["claims"]), row["claims"]
    # at tiny every claim held; at GPT-2 scale with random weights they are reported, whatever they say
    assert all(c["status"] == "PASS" for c in rec["scales"]["tiny"][0]["claims"])
    # the base and the SFT checkpoint were built once, in the cache the record names, and read from it
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()) == ["base", "sft"]
