"""A simulated LLM judge with the biases MT-Bench measured (Zheng et al. 2023), and the fixes.

An LLM-as-a-judge reads a prompt and two answers and says which is better, or "tie". Zheng et
al. found three systematic biases: **position bias** (the answer shown first wins more often),
**verbosity bias** (longer answers win, even when the extra text adds nothing; a "repetitive
list" attack pads an answer and wins), and self-enhancement. This module simulates a judge on
top of the world's gold reward g(x, y) so each bias can be measured against the truth.

The judge's perceived quality of a single answer (its "score", in gold units) is

    s(x, y) = g(x, y) + verbosity_bias * temperature * words(y) + score_noise * e(x, y)

where e(x, y) ~ N(0, 1) is the judge's own misreading of that answer: drawn once per
(judge, prompt, answer) from a hash, so the judge repeats its mistakes (like a temperature-0
LLM) rather than resampling them.
and for a pair shown in the order (first, second) its logit is

    z = (s(x, first) - s(x, second)) / temperature + position_bias.

The judge states its confidence that the first answer is better as sigma(z). Its verdict
says "tie" inside a band of half-width m = ``tie_margin``:

    u = z (+ n);   "first" if u > m,   "second" if u < -m,   "tie" otherwise.

By default the judge is deterministic (like an LLM judge decoding at temperature 0). With
``noise=True`` each verdict adds a fresh n ~ Logistic(0, 1), so P(first) = sigma(z - m),
P(second) = sigma(-z - m) and P(tie) is the rest.

Swap-and-tie aggregation (MT-Bench's conservative rule): judge both orders, keep the verdict
when the two agree, and call it a tie when they do not. For a deterministic judge it makes the
verdict independent of the order, at the price of widening the tie band from m to
m + |position_bias| (with d = (s(x, a) - s(x, b)) / temperature, "a" needs d > m + |position_bias|);
it does nothing against verbosity bias, which both orders share.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from preflab.world import FILLER, as_rng, sigmoid

__all__ = ["Judge", "VERDICTS", "judge_both_orders", "swap_consistency", "first_position_rate",
           "swap_and_tie", "gold_outcomes", "agreement_with_gold", "pad_with_repeats",
           "reliability_curve", "expected_calibration_error"]

#: Verdicts in terms of the two answers being compared, a and b.
VERDICTS = ("a", "b", "tie")


@dataclass(frozen=True)
class Judge:
    """A simulated pairwise judge. See the module docstring for the equations.

    temperature:     gold-reward units per unit of logit (lower: sharper, more confident judge)
    position_bias:   logit bonus of whichever answer is shown first (0: none)
    verbosity_bias:  logit per extra word of the first answer over the second (0: none)
    tie_margin:      half-width of the tie band on the logit (0: never says tie)
    score_noise:     sd (gold units) of the judge's fixed per-answer misreading (0: none)
    noise:           add fresh Logistic(0, 1) noise to each verdict (default False: deterministic)

    Lesson 11.
    """

    temperature: float = 0.25
    position_bias: float = 0.0
    verbosity_bias: float = 0.0
    tie_margin: float = 0.0
    score_noise: float = 0.0
    noise: bool = False
    name: str = "judge"

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"Judge temperature must be > 0, got {self.temperature}")
        if self.tie_margin < 0:
            raise ValueError(f"Judge tie_margin must be >= 0, got {self.tie_margin}")
        if self.score_noise < 0:
            raise ValueError(f"Judge score_noise must be >= 0, got {self.score_noise}")

    def misreading(self, prompt: str, response: str) -> float:
        """e(x, y) ~ N(0, 1), fixed for this judge, prompt and answer (seeded by a hash)."""
        h = hashlib.sha256(f"{self.name}\x00{prompt}\x00{response}".encode()).digest()
        return float(np.random.default_rng(int.from_bytes(h[:8], "little")).standard_normal())

    def score(self, world, prompt: str, response: str) -> float:
        """The judge's single-answer score
        s(x, y) = g(x, y) + verbosity_bias * temperature * words(y) + score_noise * e(x, y)."""
        s = world.gold_reward(prompt, response) + self.verbosity_bias * self.temperature * len(response.split())
        if self.score_noise:
            s += self.score_noise * self.misreading(prompt, response)
        return s

    def logit(self, world, prompt: str, first: str, second: str) -> float:
        """z = (s(first) - s(second)) / temperature + position_bias."""
        return (self.score(world, prompt, first) - self.score(world, prompt, second)) / self.temperature + self.position_bias

    def confidence(self, world, prompt: str, first: str, second: str) -> float:
        """The judge's stated probability that the answer shown first is better: sigma(z)."""
        return sigmoid(self.logit(world, prompt, first, second))

    def verdict(self, world, prompt: str, first: str, second: str, rng: np.random.Generator | None = None) -> str:
        """"first", "second" or "tie" for the answers in the order shown."""
        u = self.logit(world, prompt, first, second)
        if self.noise:
            if rng is None:
                raise ValueError("a noisy judge needs rng= (a numpy Generator); or build it with noise=False")
            q = float(rng.random())
            q = min(max(q, 1e-12), 1 - 1e-12)
            u += math.log(q / (1.0 - q))  # a Logistic(0, 1) draw
        if u > self.tie_margin:
            return "first"
        if u < -self.tie_margin:
            return "second"
        return "tie"





def judge_both_orders(judge: Judge, world, prompts: Sequence[str], a: Sequence[str], b: Sequence[str],
                      rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Judge every pair twice: a shown first, then b shown first.

    Returns two arrays of verdicts in terms of a and b ("a", "b", "tie"): ``v_ab`` (a shown first)
    and ``v_ba`` (b shown first). A position-free judge gives the same answer in both.

    Lesson 11.
    """
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(f"prompts, a and b must have the same length, got {len(prompts)}, {len(a)}, {len(b)}")
    rng = as_rng(rng) if rng is not None else None
    to_ab = {"first": "a", "second": "b", "tie": "tie"}
    to_ba = {"first": "b", "second": "a", "tie": "tie"}
    v_ab = [to_ab[judge.verdict(world, p, x, y, rng)] for p, x, y in zip(prompts, a, b)]
    v_ba = [to_ba[judge.verdict(world, p, y, x, rng)] for p, x, y in zip(prompts, a, b)]
    return np.array(v_ab, dtype=object), np.array(v_ba, dtype=object)


def _check_verdicts(*vs) -> list[np.ndarray]:
    out = [np.asarray(v, dtype=object) for v in vs]
    n = len(out[0])
    for v in out:
        if v.ndim != 1 or len(v) != n:
            raise ValueError("verdict arrays must be 1-D and of the same length")
        bad = set(v.tolist()) - set(VERDICTS)
        if bad:
            raise ValueError(f"verdicts must be among {VERDICTS}, got {sorted(map(str, bad))}")
    if n == 0:
        raise ValueError("no verdicts given")
    return out


def swap_consistency(v_ab, v_ba) -> float:
    """Share of pairs whose verdict is the same in both orders (a tie in both counts as consistent). Lesson 11."""
    v_ab, v_ba = _check_verdicts(v_ab, v_ba)
    return float(np.mean(v_ab == v_ba))


def first_position_rate(v_ab, v_ba) -> float:
    """Among decisive verdicts (not ties) in both orders, the share that chose the answer shown first.
    0.5 for a judge without position bias (averaged over both orders). Lesson 11."""
    v_ab, v_ba = _check_verdicts(v_ab, v_ba)
    first = np.concatenate([v_ab == "a", v_ba == "b"])
    decisive = np.concatenate([v_ab != "tie", v_ba != "tie"])
    if not decisive.any():
        raise ValueError("no decisive verdicts: the judge said tie every time")
    return float(first[decisive].mean())


def swap_and_tie(v_ab, v_ba) -> np.ndarray:
    """The conservative aggregate: the shared verdict where both orders agree, "tie" where they do not. Lesson 11."""
    v_ab, v_ba = _check_verdicts(v_ab, v_ba)
    return np.where(v_ab == v_ba, v_ab, "tie").astype(object)


def gold_outcomes(gold_a, gold_b, tol: float = 1e-9) -> np.ndarray:
    """The gold verdicts: "a" where g(a) > g(b) + tol, "b" where g(b) > g(a) + tol, else "tie". Lesson 11."""
    ga, gb = np.asarray(gold_a, dtype=float), np.asarray(gold_b, dtype=float)
    if ga.shape != gb.shape:
        raise ValueError(f"gold_a and gold_b have shapes {ga.shape} and {gb.shape}")
    return np.where(ga > gb + tol, "a", np.where(gb > ga + tol, "b", "tie")).astype(object)


def agreement_with_gold(verdicts, gold, include_ties: bool = True) -> float:
    """How often the judge's verdicts match the gold verdicts (from :func:`gold_outcomes`).

    include_ties=True: three-way exact match over all pairs (a tie must be called a tie).
    include_ties=False: only pairs where both the judge and gold are decisive ("agreement
    without ties" in MT-Bench's tables).

    Lesson 11.
    """
    v, g = _check_verdicts(verdicts, gold)
    if include_ties:
        return float(np.mean(v == g))
    keep = (v != "tie") & (g != "tie")
    if not keep.any():
        raise ValueError("no pair where both the judge and gold are decisive")
    return float(np.mean(v[keep] == g[keep]))


def pad_with_repeats(response: str, n: int = 3, sentence: str | None = None) -> str:
    """The repetitive-padding attack: append ``n`` copies of a sentence that adds no information.

    By default the sentence is one the world's gold reward gives no credit ("i hope this
    helps."), so gold is unchanged while a verbosity-biased judge scores the answer higher.

    Lesson 11.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if sentence is None:

        sentence = FILLER[0]
    return " ".join([response.strip()] + [sentence] * n).strip()


def reliability_curve(confidence, outcome, n_bins: int = 10) -> dict:
    """Calibration of stated probabilities: bin ``confidence`` (P(event)) into equal-width bins
    and compare each bin's mean confidence with the observed frequency of ``outcome`` (0/1,
    or 0.5 for a gold tie). Returns bin centres, mean confidence, observed rate and counts
    (empty bins are dropped). Lesson 11."""
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(outcome, dtype=float)
    if c.shape != y.shape or c.ndim != 1 or c.size == 0:
        raise ValueError("confidence and outcome must be 1-D arrays of the same, nonzero length")
    if np.any((c < 0) | (c > 1)):
        raise ValueError("confidence must be probabilities in [0, 1]")
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(c, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    keep = counts > 0
    mean_c = np.bincount(idx, weights=c, minlength=n_bins)[keep] / counts[keep]
    rate = np.bincount(idx, weights=y, minlength=n_bins)[keep] / counts[keep]
    centres = ((edges[:-1] + edges[1:]) / 2)[keep]
    return {"centre": centres, "confidence": mean_c, "observed": rate, "count": counts[keep]}


def expected_calibration_error(confidence, outcome, n_bins: int = 10) -> float:
    """ECE = sum over bins of (n_bin / n) * |mean confidence - observed rate|. Lesson 11."""
    rc = reliability_curve(confidence, outcome, n_bins)
    w = rc["count"] / rc["count"].sum()
    return float(np.sum(w * np.abs(rc["confidence"] - rc["observed"])))
