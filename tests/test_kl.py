"""Tests for preflab.kl: KL on finite sets, the KL-regularized optimum, best-of-n, sample estimators."""

import math

import numpy as np
import pytest
import torch

from preflab.kl import (
    best_of_n_kl,
    best_of_n_policy,
    kl_divergence,
    kl_estimates,
    kl_regularized_objective,
    optimal_policy,
)


def random_dist(rng, n, size=None):
    shape = (n,) if size is None else (*size, n)
    x = rng.exponential(1.0, shape)
    return x / x.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# kl_divergence


def test_kl_hand_values():
    # 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75) = 0.5 (log 2 + log(2/3)) = 0.1438410362
    assert kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.1438410362, abs=1e-10)
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))  # 0 log 0 = 0
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf  # p > 0 where q = 0
    assert kl_divergence([0.2, 0.8], [0.2, 0.8]) == 0.0


def test_kl_types_and_batches():
    rng = np.random.default_rng(0)
    p, q = random_dist(rng, 5, (3,)), random_dist(rng, 5, (3,))
    batch = kl_divergence(p, q)
    assert batch.shape == (3,) and np.all(batch > 0)
    assert batch[1] == pytest.approx(kl_divergence(p[1], q[1]))
    tt = kl_divergence(torch.from_numpy(p), torch.from_numpy(q))
    assert isinstance(tt, torch.Tensor) and np.allclose(tt.numpy(), batch)
    assert kl_divergence(p, q[0]).shape == (3,)  # broadcast over leading axes
    t32 = kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
    assert torch.isinf(t32)


def test_kl_errors():
    with pytest.raises(ValueError, match="negative"):
        kl_divergence([1.2, -0.2], [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        kl_divergence([0.5, 0.4], [0.5, 0.5])
    with pytest.raises(ValueError, match="q must sum to 1"):
        kl_divergence([0.5, 0.5], [0.5, 0.6])
    with pytest.raises(ValueError, match="shapes do not match"):
        kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence([float("nan"), 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one outcome"):
        kl_divergence([], [])


# ----------------------------------------------------------------------------------------------
# the KL-regularized optimum


def test_optimal_policy_hand_value():
    # ref uniform over 2, rewards (0, log 3), beta 1: pi* ∝ (1, 3) -> (1/4, 3/4)
    assert optimal_policy([0.5, 0.5], [0.0, math.log(3)], 1.0) == pytest.approx([0.25, 0.75])
    # beta 2 halves the inverse temperature: pi* ∝ (1, sqrt 3)
    s3 = math.sqrt(3)
    assert optimal_policy([0.5, 0.5], [0.0, math.log(3)], 2.0) == pytest.approx([1 / (1 + s3), s3 / (1 + s3)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_identity(seed):
    # J(pi*) - J(pi) = beta KL(pi || pi*), exactly, for any pi; J(pi*) = beta log Z
    rng = np.random.default_rng(seed)
    n = 50
    ref, pi = random_dist(rng, n), random_dist(rng, n, (4,))
    rewards = rng.normal(0, 3, n)
    for beta in (0.05, 0.7, 5.0):
        star = optimal_policy(ref, rewards, beta)
        gap = kl_regularized_objective(star, ref, rewards, beta) - kl_regularized_objective(pi, ref, rewards, beta)
        assert np.allclose(gap, beta * kl_divergence(pi, star), atol=1e-6, rtol=0)
        assert np.all(gap > 0)
        log_z = np.log(np.sum(ref * np.exp(rewards / beta)))
        assert kl_regularized_objective(star, ref, rewards, beta) == pytest.approx(beta * log_z, abs=1e-6)


def test_gap_identity_torch():
    g = torch.Generator().manual_seed(3)
    ref = torch.softmax(torch.randn(30, generator=g, dtype=torch.float64), -1)
    pi = torch.softmax(torch.randn(30, generator=g, dtype=torch.float64), -1)
    r = torch.randn(30, generator=g, dtype=torch.float64)
    star = optimal_policy(ref, r, 0.3)
    assert isinstance(star, torch.Tensor) and star.dtype == torch.float64
    gap = kl_regularized_objective(star, ref, r, 0.3) - kl_regularized_objective(pi, ref, r, 0.3)
    assert abs(gap.item() - 0.3 * kl_divergence(pi, star).item()) < 1e-6


def test_optimal_policy_beta_limits_and_direction():
    rng = np.random.default_rng(4)
    ref, rewards = random_dist(rng, 8), rng.normal(0, 1, 8)
    # beta -> inf: the reference; beta -> 0: the argmax
    assert np.allclose(optimal_policy(ref, rewards, 1e7), ref, atol=1e-6)
    greedy = optimal_policy(ref, rewards, 1e-6)
    assert greedy[np.argmax(rewards)] == pytest.approx(1.0) and np.isclose(greedy.sum(), 1.0)
    # higher beta keeps pi* closer to the reference (beta is the KL coefficient)
    kls = [kl_divergence(optimal_policy(ref, rewards, b), ref) for b in (0.1, 0.3, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(kls, kls[1:]))
    # tied best rewards share the mass in proportion to the reference
    tied = optimal_policy([0.1, 0.3, 0.6], [1.0, 1.0, 0.0], 1e-4)
    assert tied == pytest.approx([0.25, 0.75, 0.0], abs=1e-9)
    # outside the reference's support stays at zero, even with the highest reward
    assert optimal_policy([0.0, 1.0], [100.0, 0.0], 0.01)[0] == 0.0


def test_optimal_policy_extreme_rewards_finite():
    out = optimal_policy(np.full(4, 0.25), np.array([1e4, -1e4, 0.0, 5e3]), 1e-3)
    assert np.all(np.isfinite(out)) and out[0] == 1.0
    out_t = optimal_policy(torch.full((4,), 0.25), torch.tensor([1e4, -1e4, 0.0, 5e3]), 1e-3)
    assert torch.isfinite(out_t).all() and out_t[0].item() == 1.0


def test_objective_errors():
    with pytest.raises(ValueError, match="beta"):
        optimal_policy([0.5, 0.5], [0.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="beta"):
        optimal_policy([0.5, 0.5], [0.0, 1.0], -1.0)
    with pytest.raises(ValueError, match="ref_probs must sum to 1"):
        optimal_policy([0.5, 0.6], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="shapes do not match"):
        optimal_policy([0.5, 0.5], [0.0, 1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="rewards has NaN"):
        optimal_policy([0.5, 0.5], [0.0, float("inf")], 1.0)
    with pytest.raises(ValueError, match="probs has negative"):
        kl_regularized_objective([1.5, -0.5], [0.5, 0.5], [0.0, 1.0], 1.0)


# ----------------------------------------------------------------------------------------------
# best-of-n


def test_best_of_n_kl_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931471806
    assert best_of_n_kl(4) == pytest.approx(0.6362943611, abs=1e-10)  # log 4 - 3/4
    assert best_of_n_kl(np.int64(16)) == pytest.approx(math.log(16) - 15 / 16)
    for bad in (0, -3, 2.5, 2.0, True, "4"):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            best_of_n_kl(bad)


def test_best_of_n_policy_hand_value():
    # two equally likely responses, rewards (0, 1), n = 2: the better one unless both draws are the worse
    # P = (1/4, 3/4); KL = 1/4 log(1/2) + 3/4 log(3/2) = 0.1308120360 <= log 2 - 1/2
    p = best_of_n_policy([0.5, 0.5], [0.0, 1.0], 2)
    assert p == pytest.approx([0.25, 0.75])
    assert kl_divergence(p, [0.5, 0.5]) == pytest.approx(0.1308120360, abs=1e-9)
    assert best_of_n_policy([0.2, 0.5, 0.3], [3.0, 1.0, 2.0], 1) == pytest.approx([0.2, 0.5, 0.3])


def test_best_of_n_kl_bound_and_limit_on_uniform_sets():
    for n in (2, 4, 16):
        bound = best_of_n_kl(n)
        kls = []
        for size in (10, 100, 1000, 100_000):
            ref = np.full(size, 1.0 / size)
            rewards = np.random.default_rng(size).permutation(size).astype(float)  # distinct, any order
            p = best_of_n_policy(ref, rewards, n)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
            kls.append(kl_divergence(p, ref))
        assert all(k <= bound + 1e-12 for k in kls)
        assert all(a < b for a, b in zip(kls, kls[1:]))  # approaches the bound from below as the set grows
        assert bound - kls[-1] < 1e-3


def test_best_of_n_policy_matches_simulation_with_ties():
    # simulate best-of-n with argmax over the drawn list (the first drawn wins a tie) and compare
    ref = np.array([0.1, 0.25, 0.15, 0.3, 0.2])
    rewards = np.array([1.0, 2.0, 2.0, 0.0, 1.0])  # two tied pairs
    n, draws = 3, 200_000
    rng = np.random.default_rng(5)
    samples = rng.choice(5, size=(draws, n), p=ref)
    kept = samples[np.arange(draws), np.argmax(rewards[samples], axis=1)]
    empirical = np.bincount(kept, minlength=5) / draws
    exact = best_of_n_policy(ref, rewards, n)
    se = np.sqrt(exact * (1 - exact) / draws)
    assert np.all(np.abs(empirical - exact) < 5 * se + 1e-12)
    # hand check of the tied top group {1, 2}: mass 0.4, F = 1, F_- = 0.6 -> 1 - 0.6^3 = 0.784, split 25:15
    assert exact[1] == pytest.approx(0.784 * 0.25 / 0.4) and exact[2] == pytest.approx(0.784 * 0.15 / 0.4)
    # all rewards tied: best-of-n is the reference
    assert best_of_n_policy(ref, np.zeros(5), 8) == pytest.approx(ref)


def test_best_of_n_policy_torch_and_errors():
    out = best_of_n_policy(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.0, 1.0]), 2)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="n must be an integer"):
        best_of_n_policy([0.5, 0.5], [0.0, 1.0], 0)
    with pytest.raises(ValueError, match="same length"):
        best_of_n_policy([0.5, 0.5], [0.0, 1.0, 2.0], 2)
    with pytest.raises(ValueError, match="negative"):
        best_of_n_policy([1.5, -0.5], [0.0, 1.0], 2)


# ----------------------------------------------------------------------------------------------
# sample estimators


def test_kl_estimates_hand_values():
    # logp = log 0.5, logp_ref = log 0.25: r = log(1/2); k1 = log 2, k2 = (log 2)^2 / 2, k3 = (1/2 - 1) + log 2
    k1, k2, k3 = kl_estimates(np.array([math.log(0.5)]), np.array([math.log(0.25)]))
    assert k1[0] == pytest.approx(math.log(2))
    assert k2[0] == pytest.approx(math.log(2) ** 2 / 2)
    assert k3[0] == pytest.approx(math.log(2) - 0.5)


def test_kl_estimates_unbiasedness_and_sign():
    rng = np.random.default_rng(6)
    pi, ref = random_dist(rng, 10), random_dist(rng, 10)
    samples = rng.choice(10, size=200_000, p=pi)
    k1, k2, k3 = kl_estimates(np.log(pi)[samples], np.log(ref)[samples])
    exact = kl_divergence(pi, ref)
    for k in (k1, k3):  # unbiased: the mean is within a few standard errors of the exact KL
        se = k.std() / math.sqrt(len(k))
        assert abs(k.mean() - exact) < 4 * se
    assert np.all(k2 >= 0) and np.all(k3 >= 0)
    assert np.any(k1 < 0)  # k1 is unbiased but not nonnegative per sample
    # torch gives tensors of the same shape
    t1, t2, t3 = kl_estimates(torch.from_numpy(np.log(pi)[samples[:7]]), torch.from_numpy(np.log(ref)[samples[:7]]))
    assert all(isinstance(x, torch.Tensor) and x.shape == (7,) for x in (t1, t2, t3))
    assert np.allclose(t3.numpy(), k3[:7])


def test_kl_estimates_extremes_and_errors():
    k1, k2, k3 = kl_estimates(np.array([0.0, -1e4, 0.0]), np.array([-1e4, 0.0, -1e-12]))
    assert not np.any(np.isnan(k1) | np.isnan(k2) | np.isnan(k3))
    assert np.all(k3 >= 0) and k3[2] > 0  # expm1 keeps tiny ratios accurate: r^2/2 ~ 5e-25
    k1, k2, k3 = kl_estimates(torch.tensor([0.0, -1e4]), torch.tensor([-1e4, 0.0]))
    assert not torch.isnan(k3).any()
    with pytest.raises(ValueError, match="same shape"):
        kl_estimates(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        kl_estimates(np.array([-np.inf]), np.array([0.0]))
