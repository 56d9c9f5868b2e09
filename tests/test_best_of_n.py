"""Tests for preflab.best_of_n: selection, the expected-max estimator, the KL curve, bad input."""

import math
from itertools import combinations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the policy model runs fastest on one thread, and the test machine is shared

from preflab.best_of_n import best_of_n, best_of_n_curve, expected_max_weights, select_best
from preflab.kl import best_of_n_kl, best_of_n_policy, kl_divergence
from preflab.model import DecodingConfig
from preflab.world import make_world


def n_words(prompts, responses):
    return [float(len(r.split())) for r in responses]


def test_best_of_n_on_the_tiny_model_keeps_the_argmax(policy):
    model, tok = policy
    world = make_world(0)
    prompts = world.sample_prompts(3, rng=1)
    out = best_of_n(model, tok, prompts, 4, n_words, DecodingConfig(max_new_tokens=24), seed=0)
    assert out.scores.shape == (3, 4) and len(out.candidates) == 3 and out.n == 4
    for i in range(3):
        assert out.scores_chosen[i] == out.scores[i].max()
        assert out.responses[i] == out.candidates[i][out.chosen_index[i]]
        assert out.scores[i, out.chosen_index[i]] == len(out.responses[i].split())
    assert out.kl == pytest.approx(math.log(4) - 3 / 4)
    # the same seed gives the same candidates
    again = best_of_n(model, tok, prompts, 4, n_words, DecodingConfig(max_new_tokens=24), seed=0)
    assert again.candidates == out.candidates


def test_select_best_breaks_ties_toward_the_first_draw():
    out = select_best(["p"], [["a", "b b", "c c"]], n_words)
    assert out.chosen_index.tolist() == [1] and out.responses == ["b b"]


def test_expected_max_weights_match_enumeration():
    rng = np.random.default_rng(0)
    v = np.sort(rng.normal(size=7))
    for k in (1, 2, 3, 7):
        w = expected_max_weights(7, k)
        assert w.sum() == pytest.approx(1.0)
        brute = np.mean([max(v[list(c)]) for c in combinations(range(7), k)])
        assert v @ w == pytest.approx(brute)


def test_curve_reads_other_scores_at_the_selected_draw():
    rng = np.random.default_rng(1)
    proxy = rng.normal(size=(50, 8))
    gold = -proxy  # perfectly anti-correlated: best-of-k on the proxy is worst-of-k on gold
    curve = best_of_n_curve(proxy, [1, 2, 8], gold)
    assert curve["kl"] == [best_of_n_kl(1), best_of_n_kl(2), best_of_n_kl(8)]
    assert curve["selected"][0] == pytest.approx(proxy.mean())
    assert np.allclose(curve["others"][0], -np.array(curve["selected"]))
    assert curve["selected"][2] == pytest.approx(proxy.max(1).mean())
    assert curve["selected"][0] < curve["selected"][1] < curve["selected"][2]


def test_monte_carlo_best_of_n_matches_the_exact_distribution():
    # sampling-level check of the analytic result the lessons use: empirical best-of-n frequencies
    # on a finite set match preflab.kl.best_of_n_policy, and its KL is below log n - (n-1)/n
    rng = np.random.default_rng(2)
    ref = np.array([0.4, 0.3, 0.2, 0.1])
    reward = np.array([0.1, 0.5, 0.3, 0.9])
    n = 3
    draws = rng.choice(4, size=(200_000, n), p=ref)
    picked = draws[np.arange(len(draws)), reward[draws].argmax(1)]
    freq = np.bincount(picked, minlength=4) / len(picked)
    exact = best_of_n_policy(ref, reward, n)
    assert np.abs(freq - exact).max() < 0.005
    assert kl_divergence(exact, ref) <= best_of_n_kl(n) + 1e-12


def test_bad_input_messages():
    with pytest.raises(ValueError, match="one float per"):
        select_best(["p", "q"], [["a"], ["b"]], lambda p, r: [1.0])
    with pytest.raises(ValueError, match="finite"):
        select_best(["p"], [["a"]], lambda p, r: [float("nan")])
    with pytest.raises(ValueError, match="same number"):
        select_best(["p", "q"], [["a"], ["b", "c"]], n_words)
    with pytest.raises(ValueError, match="1 <= k <= n_total"):
        expected_max_weights(3, 4)
    with pytest.raises(ValueError, match="shape"):
        best_of_n_curve(np.zeros((2, 3)), [1], np.zeros((2, 4)))
