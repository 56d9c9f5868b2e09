"""Bradley-Terry: turning pairwise preferences into scores.

Each item i has a real score s_i, and a comparison of a against b comes out

    P(a preferred to b) = sigmoid(s_a - s_b) = 1 / (1 + exp(-(s_a - s_b)))

Only differences matter, so scores are defined up to a constant; we report them with mean zero.

Bradley-Terry is logistic regression. For a comparison (winner w, loser l) build the feature
vector x = e_w - e_l (item indicators: +1 at w, -1 at l, 0 elsewhere). Then s_w - s_l = s . x and
the comparison is a logistic-regression example with label 1 and weights s:

    log-likelihood(s) = sum over pairs (w, l) of log sigmoid(s_w - s_l)

(with no intercept, and the all-ones direction unidentified, hence the mean-zero convention).
A reward model trained with -log sigmoid(r(x, y_w) - r(x, y_l)) is the same model with the score
table replaced by a network.

When does the maximum-likelihood fit exist? With no regularization (l2 = 0) every item must be
comparable with every other through a chain of wins and through a chain of losses: the directed
graph "w beat l" must be strongly connected (Zermelo 1929, Ford 1957). If it is not, some group of
items never loses to the rest, and the likelihood keeps rising as that group's scores run off to
infinity. fit_bradley_terry detects this and asks for l2 > 0, which gives the MAP fit under a
Gaussian prior and always exists.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

__all__ = ["bt_prob", "bt_log_likelihood", "fit_bradley_terry", "count_intransitive_triads"]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _stable_sigmoid_np(x: np.ndarray) -> np.ndarray:
    """sigmoid(x) = exp(-log(1 + exp(-x))), with log(1 + exp(.)) via logaddexp: no overflow."""
    return np.exp(-np.logaddexp(0.0, -x))


def bt_prob(r_a, r_b):
    """P(a preferred to b) = sigmoid(r_a - r_b) under Bradley-Terry.

    Works on Python floats (returns a float), numpy arrays (returns an array) and torch tensors
    (returns a tensor; if either input is a tensor the other is converted). Arrays broadcast.
    Stable for any difference: bt_prob(1e4, 0) == 1.0 and bt_prob(0, 1e4) == 0.0, never NaN.

    Lesson 03.
    """
    if _is_torch(r_a) or _is_torch(r_b):
        import torch

        ref = r_a if _is_torch(r_a) else r_b
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        a = torch.as_tensor(r_a, dtype=dtype, device=ref.device)
        b = torch.as_tensor(r_b, dtype=dtype, device=ref.device)
        if a.shape != b.shape and not _broadcastable(a.shape, b.shape):
            raise ValueError(f"r_a and r_b have shapes {tuple(a.shape)} and {tuple(b.shape)} that do not broadcast")
        return torch.sigmoid(a - b)
    scalar = isinstance(r_a, Real) and isinstance(r_b, Real)
    try:
        a = np.asarray(r_a, dtype=np.float64)
        b = np.asarray(r_b, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError("r_a and r_b must be numbers, numpy arrays or torch tensors") from err
    if not _broadcastable(a.shape, b.shape):
        raise ValueError(f"r_a and r_b have shapes {a.shape} and {b.shape} that do not broadcast")
    p = _stable_sigmoid_np(a - b)
    return float(p) if scalar else p


def _broadcastable(shape_a, shape_b) -> bool:
    for da, db in zip(reversed(tuple(shape_a)), reversed(tuple(shape_b))):
        if da != db and da != 1 and db != 1:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# fitting


def _check_pairs(pairs, n_items: int) -> np.ndarray:
    """pairs -> int array of shape (m, 2), rows (winner, loser), every index in [0, n_items)."""
    if _is_torch(pairs):
        pairs = pairs.detach().cpu().numpy()
    try:
        arr = np.asarray(pairs)
    except (TypeError, ValueError) as err:
        raise ValueError("pairs must be a sequence of (winner, loser) index pairs") from err
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs must be a sequence of (winner, loser) pairs, i.e. shape (m, 2); got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("pairs must hold integer item indices")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"pairs must hold integer item indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_items)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"item index out of range in pairs[{row}] = {tuple(arr[row])}: indices must lie in [0, {n_items})"
        )
    same = arr[:, 0] == arr[:, 1]
    if same.any():
        row = int(np.argmax(same))
        raise ValueError(f"pairs[{row}] = {tuple(arr[row])} compares an item with itself")
    return arr


def _check_n_items(n_items) -> int:
    if isinstance(n_items, bool) or not isinstance(n_items, Integral) or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    return int(n_items)


def bt_log_likelihood(scores, pairs) -> float:
    """Log-likelihood of comparisons under Bradley-Terry scores.

        LL(s) = sum over pairs (w, l) of log sigmoid(s_w - s_l)

    scores: 1-D array (numpy or torch) of length n_items; pairs: (winner, loser) index pairs.

    Lesson 03.
    """
    if _is_torch(scores):
        scores = scores.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one score per item), got shape {s.shape}")
    arr = _check_pairs(pairs, len(s))
    d = s[arr[:, 0]] - s[arr[:, 1]]
    return float(-np.logaddexp(0.0, -d).sum())


def _check_mle_exists(n_items: int, arr: np.ndarray) -> None:
    """Raise ValueError unless the directed graph "winner -> loser" is strongly connected."""
    if n_items == 1:
        return
    wins = np.bincount(arr[:, 0], minlength=n_items)
    losses = np.bincount(arr[:, 1], minlength=n_items)
    hint = "the maximum-likelihood scores do not exist (they run off to +-infinity); pass l2 > 0 for a regularized fit"
    unseen = np.flatnonzero(wins + losses == 0)
    if len(unseen):
        raise ValueError(f"items {unseen.tolist()[:10]} appear in no comparison: {hint}")
    if not _reachable_all(n_items, arr[:, 0], arr[:, 1], undirected=True):
        raise ValueError(f"the comparison graph is disconnected, so its parts' scores are not comparable: {hint}")
    never_lost = np.flatnonzero(losses == 0)
    if len(never_lost):
        raise ValueError(f"perfect separation: items {never_lost.tolist()[:10]} never lose: {hint}")
    never_won = np.flatnonzero(wins == 0)
    if len(never_won):
        raise ValueError(f"perfect separation: items {never_won.tolist()[:10]} never win: {hint}")
    if not (_reachable_all(n_items, arr[:, 0], arr[:, 1]) and _reachable_all(n_items, arr[:, 1], arr[:, 0])):
        raise ValueError(f"perfect separation: a group of items never loses to the rest: {hint}")


def _reachable_all(n_items: int, src: np.ndarray, dst: np.ndarray, undirected: bool = False) -> bool:
    """Is every item reachable from item 0 along edges src -> dst (both ways if undirected)?"""
    neighbours = [[] for _ in range(n_items)]
    for a, b in zip(src.tolist(), dst.tolist()):
        neighbours[a].append(b)
        if undirected:
            neighbours[b].append(a)
    seen = np.zeros(n_items, dtype=bool)
    seen[0] = True
    stack = [0]
    while stack:
        for b in neighbours[stack.pop()]:
            if not seen[b]:
                seen[b] = True
                stack.append(b)
    return bool(seen.all())


def _objective(s, w, l, l2):
    """Negative penalized log-likelihood, its gradient and Hessian (dense; n_items is small).

    f(s)   = -sum log sigmoid(s_w - s_l) + l2 * sum s_i**2
    grad_i = sum over pairs of sigmoid(-(s_w - s_l)) * (-[i == w] + [i == l]) + 2 * l2 * s_i
    Hess   = sum over pairs of p(1 - p) * (e_w - e_l)(e_w - e_l)^T + 2 * l2 * I,  p = sigmoid(s_w - s_l)
    """
    n = len(s)
    d = s[w] - s[l]
    f = np.logaddexp(0.0, -d).sum() + l2 * np.dot(s, s)
    z = _stable_sigmoid_np(-d)
    grad = np.bincount(l, weights=z, minlength=n) - np.bincount(w, weights=z, minlength=n) + 2.0 * l2 * s
    v = z * (1.0 - z)
    hess = np.zeros((n, n))
    np.add.at(hess, (w, w), v)
    np.add.at(hess, (l, l), v)
    np.add.at(hess, (w, l), -v)
    np.add.at(hess, (l, w), -v)
    hess[np.diag_indices(n)] += 2.0 * l2
    return f, grad, hess


def fit_bradley_terry(n_items, pairs, l2=0.0, *, tol=1e-10, max_iter=100) -> np.ndarray:
    """Bradley-Terry scores by (penalized) maximum likelihood, with mean zero.

        minimize  f(s) = -sum over pairs (w, l) of log sigmoid(s_w - s_l) + l2 * sum_i s_i**2

    pairs: a sequence (or array of shape (m, 2)) of (winner, loser) item indices in [0, n_items).
    l2 >= 0: the ridge penalty, in the same convention as choix's ``alpha`` (choix.opt_pairwise
    minimizes the same f). With l2 > 0 the fit is the MAP estimate under a N(0, 1/(2 l2)) prior and
    always exists; with l2 = 0 it exists only if the comparison graph is strongly connected
    (see the module docstring), and a ValueError says what is wrong otherwise.

    The optimizer is Newton's method with a backtracking line search on the convex objective,
    run until the largest gradient entry is below tol. The all-ones direction does not change f
    (when l2 = 0), so each Newton step solves with H + (1/n) 11^T and then recentres: the scores
    returned sum to zero. Returns a float64 numpy array of length n_items.

    Lesson 03.
    """
    n = _check_n_items(n_items)
    if isinstance(l2, bool) or not isinstance(l2, Real) or not math.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    l2 = float(l2)
    arr = _check_pairs(pairs, n)
    if l2 == 0.0:
        _check_mle_exists(n, arr)
    if len(arr) == 0 or n == 1:
        return np.zeros(n)
    w, l = arr[:, 0], arr[:, 1]
    s = np.zeros(n)
    ones = np.full((n, n), 1.0 / n)
    f, grad, hess = _objective(s, w, l, l2)
    for _ in range(max_iter):
        if np.max(np.abs(grad)) < tol:
            break
        step = np.linalg.solve(hess + ones, -grad)
        step -= step.mean()
        t = 1.0
        while True:  # backtracking: accept the first t with sufficient decrease
            s_new = s + t * step
            f_new, grad_new, hess_new = _objective(s_new, w, l, l2)
            if f_new <= f + 1e-4 * t * np.dot(grad, step) or t < 1e-10:
                break
            t *= 0.5
        s, f, grad, hess = s_new, f_new, grad_new, hess_new
    else:
        worst = np.max(np.abs(grad))
        raise RuntimeError(f"fit_bradley_terry did not converge in {max_iter} Newton steps (max |grad| {worst:.2e})")
    return s - s.mean()


# ----------------------------------------------------------------------------------------------
# intransitivity


def count_intransitive_triads(win_matrix) -> int:
    """Number of cyclic triads (a beats b, b beats c, c beats a) in the majority relation.

    win_matrix[i, j] = number of times i beat j. Item i "beats" j when it won more of their
    comparisons (ties and unseen pairs count as neither). Bradley-Terry is transitive by
    construction, so every cyclic triad in the data is preference it cannot express.
    With M the 0/1 majority matrix, each 3-cycle appears 3 times on the diagonal of M^3:

        count = trace(M @ M @ M) / 3

    Lesson 03.
    """
    if _is_torch(win_matrix):
        win_matrix = win_matrix.detach().cpu().numpy()
    W = np.asarray(win_matrix, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"win_matrix must be square (n_items, n_items), got shape {W.shape}")
    if np.any(W < 0) or not np.all(np.isfinite(W)):
        raise ValueError("win_matrix must hold finite, nonnegative win counts")
    M = (W > W.T).astype(np.int64)
    return int(np.trace(M @ M @ M)) // 3
