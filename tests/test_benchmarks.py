"""`make bench` smoke test: every benchmark runs at a trivial size and writes its JSON fields.

Timings are not asserted (they are benchmarks, not tests); what is asserted is that the
DPO comparison trains the same thing on both sides: equal step-0 loss and matching metrics.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import run as bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    course = tmp / "course.json"
    course.write_text(json.dumps({"seed": "0", "total_runtime_s": 250.0, "passed": True, "lessons": [
        {"lesson": "00_setup", "status": "passed", "runtime_s": 40.0, "peak_mb": 600.0},
        {"lesson": "01_sft", "status": "passed", "runtime_s": 210.0, "peak_mb": 900.0}]}))
    out = tmp / "bench.json"
    code = bench.main(["--quick", "--out", str(out), "--course-json", str(course)])
    return code, json.loads(out.read_text())


def test_runs_every_benchmark_and_writes_the_machine(quick):
    code, rep = quick
    assert code == 0, rep["errors"]
    assert set(rep["results"]) == set(bench.NAMES)
    for key in ("cpu", "cores", "torch", "torch_threads", "load_average"):
        assert key in rep["machine"]
    for r in rep["table"]:
        assert {"benchmark", "what", "value", "target", "met"} <= set(r)
    for res in rep["results"].values():
        assert "load_average_before" in res and "wall_s" in res


def test_dpo_sides_compute_the_same_thing(quick):
    res = quick[1]["results"]["dpo"]
    assert res["step0_loss_abs_diff"] <= 1e-5
    assert res["tokens"]["mismatched_sequences"] == 0
    assert res["tokens"]["preflab_tokens"] == res["tokens"]["trl_tokens"] > 0
    diffs = res["agreement"]["max_abs_diff"]
    assert res["agreement"]["steps_compared"] >= 2
    assert max(diffs[k] for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")) <= 1e-4
    assert diffs["rewards/accuracies"] <= 1e-9
    for side in ("preflab", "preflab_packed", "trl", "trl_precomputed"):
        assert res["median_pairs_per_s"][side] > 0
    assert res["packed_step0_loss_abs_diff"] <= 1e-5
    assert res["median_ratio"] > 0


def test_speedups_cover_each_switch(quick):
    res = quick[1]["results"]["speedups"]
    assert set(res["median_pairs_per_s"]) == {"shipped", "concat_forward off", "cache_reference off", "trim_padding off",
                                             "pack_sequences on"}
    for name, diff in res["forward_backward"]["max_abs_logp_diff"].items():
        assert diff <= 1e-3, name  # the prototypes score the same summed log-probs


def test_course_marks_targets(quick):
    res = quick[1]["results"]["course"]
    by = {x["lesson"]: x for x in res["lessons"]}
    assert by["00_setup"]["runtime_ok"] and not by["01_sft"]["runtime_ok"]
    assert res["total_runtime_s"] == 250.0 and not res["all_within_targets"]


def test_course_says_what_to_run_when_missing(tmp_path):
    from benchmarks import course

    res = course.run(course_json=tmp_path / "nope.json")
    assert "make course" in res["message"]


def test_grading_and_colab_fields(quick):
    res = quick[1]["results"]
    g = res["grading"]
    assert g["make_grade_1_worker"]["returncode"] == 0
    assert g["nbgrader_loop"]["seconds"] > 0 and "s_per_submission" in g["make_grade_1_worker"]
    c = res["colab"]
    assert c["vocab_size"] == 50257
    for step in ("dpo", "ppo"):
        assert c["fp32"][step]["step_s"] > 0 and c["fp32"][step]["peak_mb"] > 0
