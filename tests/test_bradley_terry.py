"""Tests for preflab.bradley_terry: probabilities, the fit (against choix and against the truth), errors."""

import math

import numpy as np
import pytest
import torch

from preflab.bradley_terry import (
    bt_log_likelihood,
    bt_prob,
    count_intransitive_triads,
    fit_bradley_terry,
)


def simulate(true_scores, n_pairs, seed):
    """Random pairs of distinct items; the first wins with probability sigmoid(s_a - s_b)."""
    rng = np.random.default_rng(seed)
    n = len(true_scores)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n  # b != a
    a_wins = rng.random(n_pairs) < 1 / (1 + np.exp(-(true_scores[a] - true_scores[b])))
    return np.where(a_wins[:, None], np.stack([a, b], 1), np.stack([b, a], 1))


# ----------------------------------------------------------------------------------------------
# bt_prob


def test_bt_prob_hand_values():
    assert bt_prob(0.0, 0.0) == 0.5
    # sigmoid(1) = 1 / (1 + e^-1) = 0.7310585786
    assert bt_prob(1.0, 0.0) == pytest.approx(0.7310585786, abs=1e-10)
    assert bt_prob(2.0, 1.0) == pytest.approx(bt_prob(1.0, 0.0))  # only the difference matters
    assert bt_prob(0.3, -0.4) + bt_prob(-0.4, 0.3) == pytest.approx(1.0)
    assert isinstance(bt_prob(1.0, 0.0), float)


def test_bt_prob_types_and_extremes():
    a = np.array([1e4, -1e4, 0.0, 800.0])
    p = bt_prob(a, 0.0)
    assert isinstance(p, np.ndarray) and np.all(np.isfinite(p))
    assert p[0] == 1.0 and p[1] == 0.0 and p[2] == 0.5
    pt = bt_prob(torch.tensor([1e4, -1e4, 0.0]), torch.tensor(0.0))
    assert isinstance(pt, torch.Tensor) and torch.equal(pt, torch.tensor([1.0, 0.0, 0.5]))
    mixed = bt_prob(torch.tensor([0.5], dtype=torch.float64), np.array([0.0]))
    assert isinstance(mixed, torch.Tensor) and mixed.item() == pytest.approx(1 / (1 + math.exp(-0.5)))
    with pytest.raises(ValueError, match="do not broadcast"):
        bt_prob(np.zeros(3), np.zeros(2))


def test_log_likelihood_hand_value():
    # scores (1, 0): pair (0, 1) has log sigmoid(1) = -0.3132616875, pair (1, 0) has log sigmoid(-1) = -1.3132616875
    ll = bt_log_likelihood(np.array([1.0, 0.0]), [(0, 1), (1, 0)])
    assert ll == pytest.approx(-0.3132616875 - 1.3132616875, abs=1e-9)
    assert bt_log_likelihood(torch.tensor([1.0, 0.0]), [(0, 1)]) == pytest.approx(-0.3132616875, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# the fit


def test_two_items_closed_form():
    # a beats b 3 times, b beats a once: MLE sigmoid(s_a - s_b) = 3/4, so s_a - s_b = log 3, centred +-log(3)/2
    s = fit_bradley_terry(2, [(0, 1)] * 3 + [(1, 0)])
    assert s == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-9)


def test_fit_is_stationary_mean_zero_and_beats_perturbations():
    true = np.linspace(-1.5, 1.5, 6)
    pairs = simulate(true, 300, seed=0)
    s = fit_bradley_terry(6, pairs)
    assert abs(s.sum()) < 1e-9
    # score equations: each item's expected wins equal its observed wins
    w, l = pairs[:, 0], pairs[:, 1]
    p = bt_prob(s[w], s[l])
    expected = np.bincount(w, weights=p, minlength=6) + np.bincount(l, weights=1 - p, minlength=6)
    assert np.allclose(expected, np.bincount(w, minlength=6), atol=1e-8)
    best = bt_log_likelihood(s, pairs)
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert bt_log_likelihood(s + 0.01 * rng.standard_normal(6), pairs) < best


def test_recovers_true_scores():
    rng = np.random.default_rng(2)
    true = rng.normal(0, 1, 20)
    true -= true.mean()
    s = fit_bradley_terry(20, simulate(true, 20000, seed=3))
    assert np.corrcoef(s, true)[0, 1] > 0.99
    assert np.max(np.abs(s - true)) < 0.25


def test_accepts_arrays_and_tensors():
    pairs = simulate(np.array([0.0, 1.0, -1.0, 0.5]), 200, seed=4)
    a = fit_bradley_terry(4, pairs)
    assert np.allclose(a, fit_bradley_terry(4, [tuple(p) for p in pairs.tolist()]))
    assert np.allclose(a, fit_bradley_terry(4, torch.from_numpy(pairs)))


def test_l2_shrinks_and_handles_separation():
    pairs = [(0, 1), (1, 2), (0, 2)]  # 0 never loses, 2 never wins: no MLE
    s = fit_bradley_terry(3, pairs, l2=0.1)
    assert s[0] > s[1] > s[2] and abs(s.sum()) < 1e-9
    stronger = fit_bradley_terry(3, pairs, l2=1.0)
    assert np.all(np.abs(stronger) < np.abs(s) + 1e-12) and np.ptp(stronger) < np.ptp(s)
    # an item never compared gets score 0 under l2
    assert fit_bradley_terry(4, pairs, l2=0.1)[3] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("l2", [0.0, 0.05, 1.0])
def test_matches_choix_opt_pairwise(l2):
    # choix.opt_pairwise minimizes sum log(1 + exp(-(s_w - s_l))) + alpha * sum s^2 (choix/opt.py,
    # PairwiseFcts.objective): the same objective as ours with alpha = l2. At l2 = 0 both are plain ML.
    choix = pytest.importorskip("choix")
    true = np.random.default_rng(5).normal(0, 1, 8)
    pairs = simulate(true, 400, seed=6)
    ours = fit_bradley_terry(8, pairs, l2=l2)
    theirs = choix.opt_pairwise(8, pairs.tolist(), alpha=l2, tol=1e-10)
    assert np.allclose(ours, theirs - theirs.mean(), atol=1e-6)


def test_matches_choix_ilsr_maximum_likelihood():
    # I-LSR (Maystre and Grossglauser 2015) is a different algorithm for the same ML estimate at alpha = 0
    choix = pytest.importorskip("choix")
    true = np.random.default_rng(7).normal(0, 1, 10)
    pairs = simulate(true, 600, seed=8)
    ours = fit_bradley_terry(10, pairs)
    theirs = choix.ilsr_pairwise(10, pairs.tolist(), alpha=0.0, tol=1e-12, max_iter=1000)
    assert np.allclose(ours, theirs - theirs.mean(), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# intransitivity


def test_count_intransitive_triads():
    cycle = np.array([[0, 2, 0], [0, 0, 2], [2, 0, 0]])  # 0 > 1 > 2 > 0
    assert count_intransitive_triads(cycle) == 1
    assert count_intransitive_triads(cycle.T) == 1
    order = np.array([[0, 3, 3], [1, 0, 3], [1, 1, 0]])  # 0 > 1 > 2, 0 > 2
    assert count_intransitive_triads(order) == 0
    # BT data from distinct scores with many comparisons is transitive
    true = np.linspace(-2, 2, 6)
    pairs = simulate(true, 6000, seed=9)
    wins = np.zeros((6, 6))
    np.add.at(wins, (pairs[:, 0], pairs[:, 1]), 1)
    assert count_intransitive_triads(wins) == 0
    with pytest.raises(ValueError, match="square"):
        count_intransitive_triads(np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------------
# errors


def test_mle_existence_errors():
    with pytest.raises(ValueError, match=r"never lose.*l2 > 0"):
        fit_bradley_terry(3, [(0, 1), (1, 2), (2, 1)])
    with pytest.raises(ValueError, match=r"never win.*l2 > 0"):
        fit_bradley_terry(3, [(0, 1), (1, 0), (0, 2), (1, 2)])
    with pytest.raises(ValueError, match=r"disconnected.*l2 > 0"):
        fit_bradley_terry(4, [(0, 1), (1, 0), (2, 3), (3, 2)])
    with pytest.raises(ValueError, match=r"appear in no comparison.*l2 > 0"):
        fit_bradley_terry(3, [(0, 1), (1, 0)])
    # every item wins and loses, but {0, 1} never loses to {2, 3}
    with pytest.raises(ValueError, match=r"group of items never loses"):
        fit_bradley_terry(4, [(0, 1), (1, 0), (2, 3), (3, 2), (0, 2), (1, 3)])
    fit_bradley_terry(4, [(0, 1), (1, 0), (2, 3), (3, 2), (0, 2), (3, 1)])  # one loss back: fine


def test_input_errors():
    with pytest.raises(ValueError, match=r"out of range in pairs\[1\]"):
        fit_bradley_terry(3, [(0, 1), (1, 3)], l2=0.1)
    with pytest.raises(ValueError, match="out of range"):
        fit_bradley_terry(3, [(0, -1)], l2=0.1)
    with pytest.raises(ValueError, match="itself"):
        fit_bradley_terry(3, [(1, 1)], l2=0.1)
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        fit_bradley_terry(3, [(0, 1, 2)], l2=0.1)
    with pytest.raises(ValueError, match="integer item indices"):
        fit_bradley_terry(3, [(0.5, 1)], l2=0.1)
    with pytest.raises(ValueError, match="l2"):
        fit_bradley_terry(3, [(0, 1)], l2=-1.0)
    with pytest.raises(ValueError, match="n_items"):
        fit_bradley_terry(0, [])
    with pytest.raises(ValueError, match="1-D"):
        bt_log_likelihood(np.zeros((2, 2)), [(0, 1)])
