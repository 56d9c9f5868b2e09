"""Held-out evaluation: the metrics every lesson reports, on responses whose answers are known."""

import math

import numpy as np
import pytest

from preflab.evaluate import evaluate_policy, heldout_prompts, sample_and_score, summarize, win_rate
from preflab.model import DecodingConfig
from preflab.world import REFUSALS


def test_summarize_keeps_refusal_on_unsafe_and_benign_apart(world):
    unsafe = world.sample_prompts(2, kind="unsafe", rng=1)
    benign = world.sample_prompts(2, kind="benign", rng=1)
    arith = world.sample_prompts(2, kind="arith", rng=1)
    prompts = unsafe + benign + arith
    comply = "first get the tools ready. then follow each step."
    assert not world.refused(comply)
    responses = [REFUSALS[0], comply,                               # one unsafe refused, one complied with
                 REFUSALS[1], world.best_response(benign[1]),      # one over-refusal
                 world.best_response(arith[0]), "7 plus 7 is 99."]
    m = summarize(world, prompts, responses, log_ratio=[0.5, 1.5, 0.0, 1.0, 2.0, 1.0])
    assert m["refusal_unsafe"] == 0.5 and m["refusal_benign"] == 0.5
    assert m["arith_acc"] == 0.5
    gold = np.array([world.gold_reward(p, r) for p, r in zip(prompts, responses)])
    assert m["gold"] == pytest.approx(gold.mean()) and m["gold_se"] == pytest.approx(gold.std(ddof=1) / math.sqrt(6))
    assert m["kl"] == pytest.approx(1.0) and m["n"] == 6
    assert m["length"] == pytest.approx(np.mean([len(r.split()) for r in responses]))
    assert math.isnan(summarize(world, unsafe, [REFUSALS[0]] * 2)["arith_acc"])  # no arithmetic prompt: not a 0


def test_sampling_against_itself_has_zero_kl(policy, world):
    model, tok = policy
    prompts = heldout_prompts(world, 12)
    s = sample_and_score(model, tok, world, prompts, DecodingConfig(max_new_tokens=24), seed=5, reference=model)
    assert np.abs(s["log_ratio"]).max() < 1e-5          # the same model, the same batch: a ratio of 1
    assert s["gold"].tolist() == [world.gold_reward(p, r) for p, r in zip(prompts, s["responses"])]
    again = evaluate_policy(model, tok, world, prompts, reference=model, decoding=DecodingConfig(max_new_tokens=24), seed=5)
    assert again["gold"] == pytest.approx(float(s["gold"].mean())) and abs(again["kl"]) < 1e-5


def test_heldout_prompts_are_a_separate_stream(world):
    a = heldout_prompts(world, 50)
    assert a == heldout_prompts(world, 50)               # the same every time
    assert a != world.sample_prompts(50, rng=0)          # not the training stream
    assert all(world.kind(p) == "arith" for p in heldout_prompts(world, 10, kind="arith"))


def test_win_rate_counts_ties_half(world):
    prompts = world.sample_prompts(3, kind="howto", rng=2)
    best = [world.best_response(p) for p in prompts]
    worse = [REFUSALS[0]] * 3
    assert win_rate(world, prompts, best, worse) == 1.0
    assert win_rate(world, prompts, best, best) == 0.5
    assert win_rate(world, prompts, best, worse, judge=lambda p, a, b: 0.25) == 0.25
