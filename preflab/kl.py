"""KL divergence and the KL-regularized optimum, on finite (enumerable) response sets.

The RLHF objective trades reward against staying close to a reference policy:

    J(pi) = E_{y ~ pi}[r(y)] - beta * KL(pi || pi_ref)

Its maximizer has a closed form (DPO paper, eq. 4):

    pi*(y) = pi_ref(y) * exp(r(y) / beta) / Z,   Z = sum_y pi_ref(y) * exp(r(y) / beta)

beta is the KL coefficient: a larger beta keeps pi* closer to pi_ref (1/beta is the inverse
temperature). Everything here works on the last axis of numpy arrays or torch tensors and returns
the same kind; probabilities are validated (nonnegative, summing to 1).

Also here: best-of-n sampling's exact distribution and its KL (log n - (n-1)/n), and the k1, k2,
k3 sample estimators of KL used when the response set is too large to enumerate.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

__all__ = [
    "kl_divergence",
    "optimal_policy",
    "kl_regularized_objective",
    "best_of_n_kl",
    "best_of_n_policy",
    "kl_estimates",
]


# ----------------------------------------------------------------------------------------------
# numpy / torch plumbing: compute in the caller's library, validate with clear messages


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _lib(*xs):
    """torch if any input is a tensor, else numpy."""
    if any(_is_torch(x) for x in xs):
        import torch

        return torch
    return np


def _to(lib, x, like=None):
    """x as a float array/tensor of lib (float64 unless `like` already is a float tensor)."""
    if lib is np:
        if _is_torch(x):
            x = x.detach().cpu().numpy()
        try:
            return np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"expected numbers, got {type(x).__name__}") from err
    import torch

    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    if not isinstance(x, torch.Tensor):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"expected numbers, got {type(x).__name__}") from err
    like_float = isinstance(like, torch.Tensor) and like.is_floating_point()
    dtype = like.dtype if like_float else torch.float64
    device = like.device if isinstance(like, torch.Tensor) else None
    return torch.as_tensor(x, dtype=dtype, device=device)



def _check_rewards(lib, rewards, like):
    """Rewards as the same library and dtype as ``like``; every entry finite."""
    r = _to(lib, rewards, like=like)
    if not _all(lib, lib.isfinite(r)):
        raise ValueError("rewards has NaN or inf entries")
    return r

def _all(lib, cond) -> bool:
    return bool(cond.all()) if lib is not np else bool(np.all(cond))


def _sum_tol(x) -> float:
    """Tolerance on sum(p) = 1: tight in float64, looser in float32 and below."""
    dtype = str(x.dtype)
    return 1e-6 if "64" in dtype else 1e-4 if "32" in dtype else 1e-2


def _check_probs(lib, p, name: str):
    p = _to(lib, p)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one outcome on its last axis, got shape {tuple(p.shape)}")
    if not _all(lib, lib.isfinite(p)):
        raise ValueError(f"{name} has NaN or inf entries")
    if not _all(lib, p >= 0):
        raise ValueError(f"{name} has negative probabilities")
    total = p.sum(-1)
    if not _all(lib, abs(total - 1.0) <= _sum_tol(p)):
        worst = float(abs(total - 1.0).max())
        raise ValueError(f"{name} must sum to 1 along the last axis (off by up to {worst:.3g})")
    return p


def _check_shapes(**named) -> None:
    shapes = {k: tuple(v.shape) for k, v in named.items()}
    lasts = {s[-1] if s else None for s in shapes.values()}
    ok = len(lasts) == 1
    if ok:
        try:
            np.broadcast_shapes(*shapes.values())
        except ValueError:
            ok = False
    if not ok:
        listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes do not match (same number of outcomes on the last axis, broadcastable): {listed}")


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return float(beta)


def _xlogy(lib, x, y):
    """x * log(y), with 0 * log(anything) = 0 (torch.xlogy's and scipy's convention)."""
    if lib is not np:
        return lib.xlogy(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log(y))


def _logsumexp(lib, x):
    if lib is not np:
        return lib.logsumexp(x, dim=-1, keepdim=True)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# KL and the optimum


def kl_divergence(p, q):
    """KL(p || q) = sum_y p(y) * log(p(y) / q(y)), over the last axis.

    Conventions: 0 * log(0 / q) = 0, and p(y) > 0 with q(y) = 0 gives +inf. p and q must be
    probability vectors (nonnegative, summing to 1) with the same number of outcomes; leading axes
    broadcast. Returns a float for 1-D numpy input, otherwise an array/tensor of the leading shape.

    Lesson 05.
    """
    lib = _lib(p, q)
    p = _check_probs(lib, p, "p")
    q = _check_probs(lib, q, "q")
    _check_shapes(p=p, q=q)
    kl = (_xlogy(lib, p, p) - _xlogy(lib, p, q)).sum(-1)
    if lib is np and kl.ndim == 0:
        return float(kl)
    return kl


def optimal_policy(ref_probs, rewards, beta):
    """The KL-regularized optimum (DPO paper, eq. 4), over the last axis.

        pi*(y) = pi_ref(y) * exp(r(y) / beta) / sum_y' pi_ref(y') * exp(r(y') / beta)

    computed in log space: log pi* = log pi_ref + r / beta - logsumexp(log pi_ref + r / beta).
    beta is the KL coefficient: higher beta keeps pi* closer to the reference (1/beta is the
    inverse temperature). As beta -> inf, pi* -> pi_ref; as beta -> 0, pi* puts all its mass on the
    highest-reward responses in the reference's support (shared in proportion to pi_ref on ties).
    Responses with pi_ref(y) = 0 keep probability 0.

    Lesson 05.
    """
    lib = _lib(ref_probs, rewards)
    beta = _check_beta(beta)
    ref = _check_probs(lib, ref_probs, "ref_probs")
    r = _check_rewards(lib, rewards, like=ref)
    _check_shapes(ref_probs=ref, rewards=r)
    with np.errstate(divide="ignore"):
        logits = lib.log(ref) + r / beta
    return lib.exp(logits - _logsumexp(lib, logits))


def kl_regularized_objective(probs, ref_probs, rewards, beta):
    """J(pi) = E_pi[r] - beta * KL(pi || pi_ref), over the last axis.

    For the optimum pi* of optimal_policy, J(pi*) = beta * log Z and, for every pi,

        J(pi*) - J(pi) = beta * KL(pi || pi*)

    so pi* is the unique maximizer and the gap is exactly a KL (lesson 05 checks this numerically).
    Returns -inf when pi puts mass where pi_ref has none.
    """
    lib = _lib(probs, ref_probs, rewards)
    beta = _check_beta(beta)
    p = _check_probs(lib, probs, "probs")
    r = _check_rewards(lib, rewards, like=p)
    _check_shapes(probs=p, rewards=r)
    expected_reward = (p * r).sum(-1)
    return expected_reward - beta * kl_divergence(p, ref_probs)


# ----------------------------------------------------------------------------------------------
# best-of-n


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return int(n)


def best_of_n_kl(n) -> float:
    """KL(best-of-n || pi_ref) = log n - (n - 1) / n.

    Exact when the reward is continuous (no ties), and an upper bound for every finite response
    set (Stiennon et al. 2020; Beirami et al. 2024). n = 1 gives 0; it grows like log n.

    Lesson 05.
    """
    n = _check_n(n)
    return math.log(n) - (n - 1) / n


def best_of_n_policy(ref_probs, rewards, n):
    """Exact distribution of best-of-n sampling on a finite response set.

    Draw n responses independently from pi_ref, keep the one with the highest reward. With the
    responses sorted by reward, F(y) = P_ref(reward <= r(y)) and F_-(y) = P_ref(reward < r(y)):

        P_bon(y) = F(y)**n - F_-(y)**n                       (distinct rewards)

    Ties: among drawn responses with the same highest reward, the one drawn first is kept (what
    argmax over the sample list does). The tied group G then gets F(G)**n - F_-(G)**n in total,
    split inside the group in proportion to pi_ref, since the first-drawn member of G is a draw
    from pi_ref restricted to G. Computed as F**n * (1 - (F_- / F)**n) with log1p and expm1, F from the upper tail.
    Input: 1-D ref_probs and rewards (numpy or torch); returns the same kind.

    Lesson 05.
    """
    n = _check_n(n)
    lib = _lib(ref_probs, rewards)
    ref = _check_probs(np, ref_probs, "ref_probs")
    r = _to(np, rewards)
    if ref.ndim != 1 or r.shape != ref.shape:
        raise ValueError(f"ref_probs and rewards must be 1-D of the same length, got {ref.shape} and {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards has NaN or inf entries")
    ref = ref / ref.sum()
    # one entry per distinct reward value, in increasing order
    values, group = np.unique(r, return_inverse=True)
    group_mass = np.bincount(group, weights=ref, minlength=len(values))
    # F and F_- from the upper tail, S = P(reward > r): exact (F = 1) at the top, where best-of-n puts its mass
    above = np.concatenate([np.cumsum(group_mass[::-1])[::-1][1:], [0.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_cdf = np.log1p(-np.minimum(above, 1.0))  # log F
        log_below = np.log1p(-np.minimum(above + group_mass, 1.0))  # log F_-
        log_ratio = log_below - log_cdf  # log(F_- / F) <= 0
        group_prob = np.where(group_mass > 0, np.exp(n * log_cdf) * -np.expm1(n * log_ratio), 0.0)
        share = np.where(group_mass[group] > 0, ref / group_mass[group], 0.0)
    probs = group_prob[group] * share
    if lib is np:
        return probs
    like = ref_probs if _is_torch(ref_probs) else rewards
    return lib.as_tensor(probs, dtype=like.dtype if like.is_floating_point() else lib.float64, device=like.device)


# ----------------------------------------------------------------------------------------------
# sample estimators


def kl_estimates(logp, logp_ref):
    """Per-sample estimators of KL(pi || pi_ref) from samples y ~ pi (Schulman, "Approximating
    KL divergence", 2020). With the log ratio r = log pi_ref(y) - log pi(y):

        k1 = -r                      unbiased; can be negative for a single sample
        k2 = r**2 / 2                always >= 0; biased (low bias when pi is close to pi_ref)
        k3 = (exp(r) - 1) - r        always >= 0 (since exp(r) >= 1 + r); unbiased only where pi
                                     covers pi_ref's support (E[exp(r) - 1] = pi_ref(supp pi) - 1)

    Average them over samples to estimate the KL. logp and logp_ref are log-probabilities of the
    same samples under pi and pi_ref (same shape; numpy or torch). Returns (k1, k2, k3), each of
    that shape and kind. k3 uses expm1 for accuracy at small r; it is +inf (never NaN) if
    exp(r) overflows.

    Lesson 05.
    """
    lib = _lib(logp, logp_ref)
    a = _to(lib, logp)
    b = _to(lib, logp_ref, like=a)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"logp and logp_ref must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (_all(lib, lib.isfinite(a)) and _all(lib, lib.isfinite(b))):
        raise ValueError("logp and logp_ref must be finite log-probabilities (a sample from pi has logp > -inf)")
    r = b - a
    k1 = -r
    k2 = r**2 / 2
    with np.errstate(over="ignore"):
        k3 = lib.expm1(r) - r
    return k1, k2, k3
