"""`make bench`: the harness (interleaved rounds, per-round ratios, the machine, the targets)
and a smoke run of every benchmark at a trivial size.

Timings are not asserted (they are benchmarks, not tests); what is asserted is the harness's
logic, the JSON fields, and that the DPO comparison trains the same thing on both sides:
equal step-0 loss and log-probs at both model sizes, matching metrics on the tiny one.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from benchmarks import common, dpo_vs_trl
from benchmarks import run as bench


# ----------------------------------------------------------------------------- the harness, no timing
def test_round_orders_run_every_variant_once_per_round_in_every_position():
    names = ["a", "b", "c", "d"]
    orders = common.round_orders(names, rounds=8, seed=3)
    assert len(orders) == 8
    for order in orders:
        assert sorted(order) == names  # each variant once per round
    for pos in range(len(names)):  # over len(names) rounds, each variant once in each position
        assert sorted(o[pos] for o in orders[: len(names)]) == names
        assert Counter(o[pos] for o in orders) == Counter({n: 2 for n in names})
    assert orders == common.round_orders(names, rounds=8, seed=3)  # seeded: reproducible
    assert orders[0] != orders[1]  # not all of A, then all of B


def test_interleaved_alternates_variants_round_after_round():
    calls = []

    def variant(name):
        def go():
            calls.append(name)
            return {"seconds": float(len(calls))}
        return go

    out = common.interleaved({k: variant(k) for k in "abc"}, rounds=3, seed=0)
    assert calls == [name for order in out["order"] for name in order]
    assert len(calls) == 9 and all(calls[i:i + 3].count(x) == 1 for i in (0, 3, 6) for x in "abc")
    for name, runs in out["runs"].items():
        assert [r["round"] for r in runs] == [0, 1, 2]
        for r in runs:
            assert out["order"][r["round"]][r["position"]] == name
            assert "load_average_before" in r


def test_per_round_ratios_pair_each_round_with_its_own_baseline():
    runs = {"base": [{"round": 0, "pairs_per_s": 10.0, "seconds": 4.0}, {"round": 1, "pairs_per_s": 5.0, "seconds": 8.0},
                     {"round": 2, "pairs_per_s": 20.0, "seconds": 2.0}],
            "fast": [{"round": 2, "pairs_per_s": 60.0, "seconds": 1.0}, {"round": 0, "pairs_per_s": 30.0, "seconds": 2.0},
                     {"round": 1, "pairs_per_s": None, "seconds": 2.0}]}
    # a rate: variant / baseline of the same round; a missing value skips that round
    assert common.per_round_ratios(runs, "fast", "base", "pairs_per_s") == [3.0, 3.0]
    # a time: baseline / variant (how many times faster)
    assert common.per_round_ratios(runs, "fast", "base", "seconds", higher_is_better=False) == [2.0, 2.0, 4.0]
    s = common.ratio_summary([2.0, 2.0, 4.0])
    assert s["median"] == 2.0 and s["min"] == 2.0 and s["max"] == 4.0 and s["rounds"] == 3
    assert s["spread"] == pytest.approx(1.0)
    assert common.fmt_ratio(s) == "2.00x [2.00-4.00]"
    empty = common.ratio_summary([])
    assert empty["median"] is None and common.fmt_ratio(empty) == "n/a"


def test_a_ratio_of_medians_is_not_what_is_reported():
    # load drifts: round 0 idle, round 1 loaded. Per-round ratios stay 2x; medians of mixed rounds would not.
    runs = {"trl": [{"round": 0, "x": 100.0}, {"round": 1, "x": 10.0}],
            "preflab": [{"round": 0, "x": 200.0}, {"round": 1, "x": 20.0}]}
    assert common.ratio_summary(common.per_round_ratios(runs, "preflab", "trl", "x"))["median"] == 2.0


def test_dpo_target_verdict_needs_the_ratio_and_the_same_step0_loss():
    from benchmarks.dpo_vs_trl import _target

    def tiny(cpu, loss0):
        return {"ratios": {"preflab / trl": {"cpu": common.ratio_summary([cpu])}},
                "step0": {"preflab": {"loss_abs_diff": loss0}}}

    assert _target(tiny(3.2, 0.0))["met"]
    assert not _target(tiny(2.9, 0.0))["met"]
    assert not _target(tiny(3.2, 1e-3))["met"]


def test_machine_records_what_matters():
    m = common.machine()
    for key in ("cpu", "cores", "isa_flags", "torch_cpu_capability", "torch_threads", "torch_interop_threads",
                "OMP_NUM_THREADS", "torch", "transformers", "trl", "load_average"):
        assert key in m
    assert {"avx2", "avx512f"} <= set(m["isa_flags"])
    assert m["trl"] and m["transformers"]
    assert m["cpu"] in common.machine_line(m)


# ----------------------------------------------------------------------------- smoke run, tiny sizes
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
    for key in ("cpu", "cores", "isa_flags", "torch", "torch_threads", "transformers", "trl", "load_average",
                "load_average_after"):
        assert key in rep["machine"]
    for r in rep["table"]:
        assert {"benchmark", "what", "value", "target", "met"} <= set(r)
    for res in rep["results"].values():
        assert "load_average_before" in res and "load_average_after" in res and "wall_s" in res


def test_targets_are_reported_with_a_verdict(quick):
    targets = quick[1]["targets"]
    assert len(targets) == 2
    for t in targets:
        assert t["target"] == ">= 3x" and isinstance(t["met"], bool) and t["measured"]


def test_dpo_rounds_are_interleaved_at_both_sizes(quick):
    sizes = quick[1]["results"]["dpo"]["sizes"]
    assert set(sizes) == {"tiny", "gpt2-small shape"}
    for label, res in sizes.items():
        names = set(res["runs"])
        assert {"preflab", "trl", "pack_sequences on"} <= names
        assert len(res["order"]) == res["setup"]["rounds"]
        for order in res["order"]:
            assert set(order) == names and len(order) == len(names)
        for name, runs in res["runs"].items():
            for r in runs:
                assert res["order"][r["round"]][r["position"]] == name
                assert r["cpu_s"] > 0 and r["seconds"] > 0
        for key in ("wall", "cpu"):
            assert res["ratios"]["preflab / trl"][key]["rounds"] == res["setup"]["rounds"]
            assert res["ratios"]["preflab / trl"][key]["median"] > 0
    assert {"concat_forward off", "cache_reference off", "trim_padding off", "trl_precomputed"} <= set(sizes["tiny"]["runs"])
    g = sizes["gpt2-small shape"]["setup"]
    assert g["vocab_size"] == 50257  # --quick shrinks the layers, keeps GPT-2's vocabulary


def test_dpo_sides_compute_the_same_thing_at_both_sizes(quick):
    sizes = quick[1]["results"]["dpo"]["sizes"]
    for label, res in sizes.items():
        for name, d in res["step0"].items():
            assert d["loss_abs_diff"] <= dpo_vs_trl.LOSS0_TOL, (label, name)
        assert res["step0"]["preflab"]["logps_rel_diff"] <= 1e-4, label
    tiny = sizes["tiny"]
    assert tiny["tokens"]["mismatched_sequences"] == 0
    assert tiny["tokens"]["preflab_tokens"] == tiny["tokens"]["trl_tokens"] > 0
    diffs = tiny["agreement"]["max_abs_diff"]
    assert tiny["agreement"]["steps_compared"] >= 2
    assert max(diffs[k] for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")) <= 1e-4
    assert diffs["rewards/accuracies"] <= 1e-9


def test_speedups_cover_each_switch(quick):
    res = quick[1]["results"]["speedups"]
    assert set(res["ratio_to_shipped"]) == {"concat_forward off", "cache_reference off", "trim_padding off",
                                            "pack_sequences on"}
    assert "dpo" in res["source"]  # under `make bench` it reads benchmark dpo's interleaved rounds
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


def test_grading_rounds_and_colab_fields(quick):
    res = quick[1]["results"]
    g = res["grading"]
    assert set(g["runs"]) == {"make_grade_1_worker", "make_grade_2_workers", "nbgrader_loop"}
    assert len(g["order"]) == g["rounds"] >= 2
    for key in ("make_grade_1_worker", "make_grade_2_workers"):
        assert g[key]["returncodes"] == [0] * g["rounds"]
        assert g[key]["speedup_vs_loop"]["rounds"] == g["rounds"] and g[key]["cpu_ratio_vs_loop"]["median"] > 0
    assert all(r["seconds"] > 0 for r in g["runs"]["nbgrader_loop"])
    assert isinstance(g["target"]["met"], bool)
    c = res["colab"]
    assert c["vocab_size"] == 50257
    for step in ("dpo", "ppo"):
        assert c["fp32"][step]["step_s"] > 0 and c["fp32"][step]["peak_mb"] > 0
