"""preflab.judge: the simulated judge's equations, biases, swap-and-tie, gold agreement, padding, calibration."""

import math

import numpy as np
import pytest

from preflab.judge import (Judge, agreement_with_gold, expected_calibration_error, first_position_rate,
                           gold_outcomes, judge_both_orders, pad_with_repeats, reliability_curve,
                           swap_and_tie, swap_consistency)


@pytest.fixture(scope="module")
def pairs(world):
    rng = np.random.default_rng(0)
    prompts = world.sample_prompts(200, rng=1)
    a = [world.sample_response(p, rng, 0.6) for p in prompts]
    b = [world.sample_response(p, rng, 0.6) for p in prompts]
    return prompts, a, b


TEA = "how do i make tea?"


def test_logit_equation(world):
    j = Judge(temperature=0.5, position_bias=0.3, verbosity_bias=0.1)
    a, b = "first boil the water.", "first boil the water. then pour the water. i hope this helps."
    ga, gb = world.gold_reward(TEA, a), world.gold_reward(TEA, b)
    z = (ga - gb) / 0.5 + 0.1 * (len(a.split()) - len(b.split())) + 0.3
    assert j.logit(world, TEA, a, b) == pytest.approx(z)
    assert j.confidence(world, TEA, a, b) == pytest.approx(1 / (1 + math.exp(-z)))
    assert j.score(world, TEA, b) == pytest.approx(gb + 0.1 * 0.5 * len(b.split()))


def test_deterministic_verdicts_and_tie_band(world):
    j = Judge(temperature=0.25, tie_margin=0.5)
    good, bad = world.best_response(TEA), "boil the water."
    assert j.verdict(world, TEA, good, bad) == "first"
    assert j.verdict(world, TEA, bad, good) == "second"
    assert j.verdict(world, TEA, good, good + " i hope this helps.") == "tie"  # equal gold, no biases
    with pytest.raises(ValueError, match="rng"):
        Judge(noise=True).verdict(world, TEA, good, bad)


def test_noisy_verdict_frequencies(world):
    """With noise, P(first) = sigma(z - m) and P(second) = sigma(-z - m)."""
    j = Judge(temperature=1.0, tie_margin=0.5, noise=True)
    a, b = "boil the water. pour the water.", "boil the water."  # gold gap 0.25, z = 0.25
    rng = np.random.default_rng(0)
    v = np.array([j.verdict(world, TEA, a, b, rng) for _ in range(4000)])
    s = lambda x: 1 / (1 + math.exp(-x))
    assert np.mean(v == "first") == pytest.approx(s(0.25 - 0.5), abs=0.03)
    assert np.mean(v == "second") == pytest.approx(s(-0.25 - 0.5), abs=0.03)


def test_unbiased_deterministic_judge_is_swap_consistent(world, pairs):
    v_ab, v_ba = judge_both_orders(Judge(tie_margin=0.5, score_noise=0.2), world, *pairs)
    assert swap_consistency(v_ab, v_ba) == 1.0
    assert first_position_rate(v_ab, v_ba) == pytest.approx(0.5)


def test_position_bias_breaks_consistency_and_swap_and_tie_helps(world, pairs):
    prompts, a, b = pairs
    v_ab, v_ba = judge_both_orders(Judge(position_bias=1.5, tie_margin=0.5), world, prompts, a, b)
    assert swap_consistency(v_ab, v_ba) < 0.8
    assert first_position_rate(v_ab, v_ba) > 0.7
    gold = gold_outcomes([world.gold_reward(p, x) for p, x in zip(prompts, a)],
                         [world.gold_reward(p, x) for p, x in zip(prompts, b)])
    st = swap_and_tie(v_ab, v_ba)
    assert agreement_with_gold(st, gold) > agreement_with_gold(v_ab, gold)
    assert agreement_with_gold(st, gold, include_ties=False) >= agreement_with_gold(v_ab, gold, include_ties=False)


def test_swap_and_tie_by_hand():
    st = swap_and_tie(["a", "a", "b", "tie"], ["a", "b", "b", "a"])
    assert st.tolist() == ["a", "tie", "b", "tie"]
    assert swap_consistency(["a", "a", "b", "tie"], ["a", "b", "b", "tie"]) == 0.75
    assert first_position_rate(["a", "a"], ["b", "a"]) == 0.75
    with pytest.raises(ValueError, match="verdicts must be among"):
        swap_and_tie(["a"], ["first"])
    with pytest.raises(ValueError, match="same length"):
        swap_consistency(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no decisive"):
        first_position_rate(["tie"], ["tie"])


def test_gold_outcomes_and_agreement():
    g = gold_outcomes([1.0, 0.0, 0.5], [0.0, 1.0, 0.5])
    assert g.tolist() == ["a", "b", "tie"]
    assert agreement_with_gold(["a", "a", "tie"], g) == pytest.approx(2 / 3)
    assert agreement_with_gold(["a", "a", "tie"], g, include_ties=False) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both the judge and gold"):
        agreement_with_gold(["tie"], ["a"], include_ties=False)


def test_padding_attack_raises_judge_not_gold(world, pairs):
    j = Judge(verbosity_bias=0.1)
    prompts, a, _ = pairs
    for p, r in list(zip(prompts, a))[:50]:
        padded = pad_with_repeats(r, 6)
        assert world.gold_reward(p, padded) == pytest.approx(world.gold_reward(p, r))
        assert j.score(world, p, padded) > j.score(world, p, r)
    assert pad_with_repeats("x.", 2, "y.") == "x. y. y."
    assert pad_with_repeats("x.", 0) == "x."
    with pytest.raises(ValueError):
        pad_with_repeats("x.", -1)


def test_misreading_is_fixed_per_answer():
    j = Judge(score_noise=0.3, name="j1")
    assert j.misreading(TEA, "a.") == j.misreading(TEA, "a.")
    assert j.misreading(TEA, "a.") != j.misreading(TEA, "b.")
    assert Judge(name="j2").misreading(TEA, "a.") != j.misreading(TEA, "a.")


def test_reliability_and_ece():
    rng = np.random.default_rng(0)
    c = rng.random(20000)
    y = (rng.random(20000) < c).astype(float)
    assert expected_calibration_error(c, y) < 0.02  # calibrated by construction
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000)) == pytest.approx(0.9)
    rc = reliability_curve([0.05, 0.06, 0.95], [0, 1, 1], n_bins=10)
    assert rc["count"].tolist() == [2, 1] and rc["observed"].tolist() == [0.5, 1.0]
    with pytest.raises(ValueError):
        reliability_curve([1.5], [1])


def test_judge_rejects_bad_settings():
    for kw in ({"temperature": 0}, {"tie_margin": -1}, {"score_noise": -0.1}):
        with pytest.raises(ValueError):
            Judge(**kw)
