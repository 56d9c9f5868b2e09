"""Best-of-n sampling: draw n responses from the policy, keep the one the reward likes best.

It is the simplest way to optimize a reward without training anything:

    y_1, ..., y_n ~ pi_ref(. | x) independently,     y_bon = argmax_i r(x, y_i)

(ties go to the first drawn). Its cost in KL from the sampling policy is known in closed form
when the reward has no ties (Stiennon et al. 2020; Gao et al. 2022):

    KL(pi_bon || pi_ref) = log n - (n - 1) / n          (preflab.kl.best_of_n_kl)

and, for every reward, an upper bound. So best-of-n gives a reward-vs-KL curve for free: the
same n candidates per prompt answer every smaller n too (:func:`best_of_n_curve` uses unbiased
order statistics, not just the first k draws).

``reward_fn(prompts, responses)`` returns one float per (prompt, response) (a list or array); it
can be the world's gold reward or a learned proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Callable, Sequence

import numpy as np

from preflab.kl import best_of_n_kl
from preflab.model import DecodingConfig, generate

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


@dataclass
class BestOfN:
    """What :func:`best_of_n` returns. ``candidates[i][j]`` is draw j for prompt i and
    ``scores[i, j]`` its reward; ``chosen_index[i]`` the kept draw, ``responses[i]`` its text. Lessons 05 and 08."""

    prompts: list[str]
    responses: list[str]
    scores_chosen: np.ndarray  # (P,)
    chosen_index: np.ndarray  # (P,)
    candidates: list[list[str]]  # P lists of n strings
    scores: np.ndarray  # (P, n)

    @property
    def n(self) -> int:
        return self.scores.shape[1]

    @property
    def kl(self) -> float:
        """The analytic KL(best-of-n || policy) = log n - (n - 1) / n (nats, per prompt)."""
        return best_of_n_kl(self.n)


def _scores(reward_fn: RewardFn, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    out = np.asarray(reward_fn(list(prompts), list(responses)), dtype=float).reshape(-1)
    if out.shape[0] != len(responses):
        raise ValueError(f"reward_fn returned {out.shape[0]} scores for {len(responses)} responses: "
                         f"it must return one float per (prompt, response)")
    if not np.all(np.isfinite(out)):
        raise ValueError("reward_fn returned NaN or inf; rewards must be finite")
    return out


def sample_candidates(policy, tokenizer, prompts: Sequence[str], n: int,
                      decoding: DecodingConfig = DecodingConfig(), seed: int = 0,
                      batch_size: int = 256) -> list[list[str]]:
    """n independent samples per prompt, as P lists of n strings (one batched generate call
    over the prompts repeated n times). Lessons 05 and 08."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if len(prompts) == 0:
        raise ValueError("best-of-n needs at least one prompt")
    flat = [p for p in prompts for _ in range(n)]
    texts = generate(policy, tokenizer, flat, decoding, seed=seed, batch_size=batch_size)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def select_best(prompts: Sequence[str], candidates: Sequence[Sequence[str]], reward_fn: RewardFn) -> BestOfN:
    """Score every candidate with ``reward_fn`` and keep the argmax per prompt (first on ties). Lessons 05 and 08."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    n = len(candidates[0])
    if any(len(c) != n for c in candidates) or n == 0:
        raise ValueError("every prompt needs the same number (>= 1) of candidates")
    flat_p = [p for p in prompts for _ in range(n)]
    flat_r = [r for c in candidates for r in c]
    scores = _scores(reward_fn, flat_p, flat_r).reshape(len(prompts), n)
    idx = scores.argmax(axis=1)  # first maximum on ties
    return BestOfN(list(prompts), [candidates[i][j] for i, j in enumerate(idx)],
                   scores[np.arange(len(prompts)), idx], idx, [list(c) for c in candidates], scores)


def best_of_n(policy, tokenizer, prompts: Sequence[str], n: int, reward_fn: RewardFn,
              decoding: DecodingConfig = DecodingConfig(), seed: int = 0, batch_size: int = 256) -> BestOfN:
    """Best-of-n: sample ``n`` responses per prompt from ``policy``, keep the highest ``reward_fn``.

    Returns a :class:`BestOfN` with the chosen responses (``.responses``), their scores, and all
    candidates with their scores (``.candidates``, ``.scores``). The policy is not changed.

    Lessons 05 and 08.
    """
    cands = sample_candidates(policy, tokenizer, prompts, n, decoding, seed, batch_size)
    return select_best(prompts, cands, reward_fn)


def expected_max_weights(n_total: int, k: int) -> np.ndarray:
    """Weights w (length n_total) such that sum_j w_j * v_(j), with v sorted ascending, is the
    expected value, at the argmax by *another* score, of the best of k draws taken without
    replacement from the n_total: w_j = C(j, k-1) / C(n_total, k) for j = 0..n_total-1 (0-based rank).

    This is the unbiased estimator of E[best-of-k] from n_total >= k i.i.d. draws (Nakano et al.
    2021, WebGPT), far less noisy than using only the first k draws.

    Lessons 05 and 08.
    """
    if not 1 <= k <= n_total:
        raise ValueError(f"need 1 <= k <= n_total, got k={k}, n_total={n_total}")
    return np.array([comb(j, k - 1) for j in range(n_total)], dtype=float) / comb(n_total, k)


def best_of_n_curve(selection_scores: np.ndarray, ks: Sequence[int], *others: np.ndarray) -> dict:
    """Expected best-of-k for each k in ``ks``, from (P, n) scores of n draws per prompt.

    Selection is by ``selection_scores`` (e.g. a proxy reward); ``others`` are (P, n) arrays of
    other measurements of the same draws (e.g. the gold reward) read off at the selected draw.
    Returns {"k": ks, "kl": log k - (k-1)/k, "selected": mean selection score, "others": [...]},
    each averaged over prompts. Ties in the selection score are broken by draw order.

    Lessons 05 and 08.
    """
    s = np.asarray(selection_scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"selection_scores must be (prompts, n), got shape {s.shape}")
    P, n = s.shape
    # stable sort: among equal scores the later draw ranks higher; argmax keeps the first draw, so
    # break ties toward the first draw by sorting on (score, -draw index)
    order = np.lexsort((-np.arange(n)[None, :].repeat(P, 0), s), axis=1)
    arrays = [s] + [np.asarray(o, dtype=float) for o in others]
    for a in arrays:
        if a.shape != s.shape:
            raise ValueError(f"all score arrays must have shape {s.shape}, got {a.shape}")
    sorted_arrays = [np.take_along_axis(a, order, axis=1) for a in arrays]
    out = {"k": list(ks), "kl": [best_of_n_kl(int(k)) for k in ks], "selected": [], "others": [[] for _ in others]}
    for k in ks:
        w = expected_max_weights(n, int(k))
        out["selected"].append(float((sorted_arrays[0] @ w).mean()))
        for i, a in enumerate(sorted_arrays[1:]):
            out["others"][i].append(float((a @ w).mean()))
    return out
