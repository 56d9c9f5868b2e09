"""RLAIF: a judge that labels pairs by a written rule set (a "constitution") (Lesson 18).

Constitutional AI (Bai et al. 2022) and RLAIF (Lee et al. 2023) replace the human labeler with a
model that reads a short list of principles and says which of two responses follows them
better. Here the judge is :class:`preflab.judge.Judge` (the course's simulated LLM judge) with its
gold-based score replaced by the constitution's:

    s(x, y) = sum_k w_k * f_k(x, y)   (+ the Judge's verbosity bias and misreading, 0 by default)

where rule k is a sentence the judge was given and f_k is how the judge reads it off a response.
Its verdict on (first, second) is the Judge's: z = (s(first) - s(second)) / temperature +
position_bias; "first" if z > tie_margin, "second" if z < -tie_margin, else "tie".

The constitution is written by people and is not the gold reward. :data:`CONSTITUTION` states
the world's main rules (refuse harm, help otherwise, give the steps, praise the movie, get the sum
right) and one the gold reward does not have (no filler), and it says nothing about garbled
sentences, which the gold reward penalizes. :data:`LITERAL_CONSTITUTION` is the same except that
its first rule names the dangerous words instead of the dangerous intent, and the judge applies
it as written: any request with "kill", "shoot", "attack", "blow up", "cut" or "break into" is to
be refused, so "how do i kill a python process?" is too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from preflab.judge import Judge
import preflab.world as world_module  # RUBRIC is read at call time: Rubric.active() swaps it
from preflab.world import HOWTO_TASKS, TRIGGER_WORDS, _lis_length, parse_response

__all__ = ["Rule", "Constitution", "CONSTITUTION", "LITERAL_CONSTITUTION", "ConstitutionalJudge",
           "judge_labels", "disagreements"]


@dataclass(frozen=True)
class Rule:
    """One written rule: its text (what the judge is told) and how the judge scores a response by it (Lesson 18).

    ``score(world, prompt, response, harmful)`` returns a number (higher: follows the rule
    better); ``harmful`` is whether the judge reads the request as one to refuse.
    """

    text: str
    score: Callable
    weight: float = 1.0


def _harm(world, prompt, response, harmful):
    p = parse_response(response)
    if not harmful:
        return 0.0
    complied = p.comply > 0 or p.unsafe_steps > 0 or len(p.steps) > 0
    return world_module.RUBRIC["comply_unsafe"] if complied else (world_module.RUBRIC["refuse_unsafe"] if p.refused else 0.0)


def _help(world, prompt, response, harmful):
    return world_module.RUBRIC["over_refusal"] if (not harmful and parse_response(response).refused) else 0.0


def _steps(world, prompt, response, harmful):
    info = world.prompt_info(prompt)
    if harmful or info.kind not in ("howto", "benign"):
        return 0.0
    steps = HOWTO_TASKS[info.target]
    order, seen, wrong, repeated = [], set(), 0, 0
    p = parse_response(response)
    for s in p.steps:
        if s not in steps:
            wrong += 1
        elif s in seen:
            repeated += 1
        else:
            seen.add(s)
            order.append(steps.index(s))
    wrong += p.unsafe_steps
    k = len(steps)
    return _lis_length(order) / k + (world_module.RUBRIC["wrong_step"] * wrong + world_module.RUBRIC["repeated_step"] * repeated) / k


def _review(world, prompt, response, harmful):
    if harmful or world.prompt_info(prompt).kind != "review":
        return 0.0
    p = parse_response(response)
    n = p.positive + p.negative
    return (p.positive - p.negative) / n if n else world_module.RUBRIC["review_no_sentiment"]


def _sum(world, prompt, response, harmful):
    if harmful or world.prompt_info(prompt).kind != "arith":
        return 0.0
    return world_module.RUBRIC["arith_correct"] if world.is_correct_arith(prompt, response) else world_module.RUBRIC["arith_wrong"]


def _no_filler(world, prompt, response, harmful):
    return -float(parse_response(response).filler)


@dataclass(frozen=True)
class Constitution:
    """A written rule set and how the judge decides which requests are harmful (Lesson 18).

    reads_harm: "intent" (the judge understands what is asked: the world's unsafe requests) or
    "keywords" (any request containing one of ``keywords`` is harmful, read literally).
    """

    name: str
    rules: tuple[Rule, ...]
    reads_harm: str = "intent"
    keywords: tuple[str, ...] = TRIGGER_WORDS

    def __post_init__(self):
        if self.reads_harm not in ("intent", "keywords"):
            raise ValueError(f"reads_harm must be 'intent' or 'keywords', got {self.reads_harm!r}")
        if not self.rules:
            raise ValueError("a constitution needs at least one rule")

    def harmful(self, world, prompt: str) -> bool:
        """Does the judge read this request as one to refuse? (Lesson 18)"""
        if self.reads_harm == "intent":
            return world.kind(prompt) == "unsafe"
        text = world.prompt_info(prompt).text
        return any(k in text for k in self.keywords)

    def score(self, world, prompt: str, response: str) -> float:
        """s(x, y) = sum_k w_k f_k(x, y) (Lesson 18)."""
        h = self.harmful(world, prompt)
        return float(sum(r.weight * r.score(world, prompt, response, h) for r in self.rules))

    def text(self) -> str:
        """The rules as the judge is given them, one numbered line each (Lesson 18)."""
        return "\n".join(f"{i}. {r.text}" for i, r in enumerate(self.rules, start=1))


_COMMON = (
    Rule("Help with every other request: refusing a harmless request is a failure.", _help),
    Rule("For a how-to request, give the task's steps in the right order; a wrong or repeated step "
         "is worse than a missing one.", _steps),
    Rule("When asked to review a movie, write about it warmly.", _review),
    Rule("When asked for a sum, give the right number.", _sum),
    Rule("Do not pad the answer with sentences that say nothing.", _no_filler, weight=0.1),
)
#: The course's constitution: harm read by intent.
CONSTITUTION = Constitution("constitution-v1", (
    Rule("Refuse a request for help hurting someone or breaking the law; never give such steps.", _harm),
) + _COMMON, reads_harm="intent")
#: The same rules with the first one written as a list of words, and applied as written.
LITERAL_CONSTITUTION = Constitution("constitution-literal", (
    Rule("Refuse any request that mentions killing, shooting, attacking, blowing up, cutting or breaking "
         "into something; never give such steps.", _harm),
) + _COMMON, reads_harm="keywords")


@dataclass(frozen=True)
class ConstitutionalJudge(Judge):
    """The course's :class:`preflab.judge.Judge`, scoring responses by a :class:`Constitution`
    instead of the gold reward (Lesson 18). Every other field means what it means on Judge."""

    constitution: Constitution = field(default=CONSTITUTION)
    name: str = "constitutional-judge"

    def score(self, world, prompt: str, response: str) -> float:
        """s(x, y) = constitution score + verbosity_bias * temperature * words(y) + score_noise * e(x, y)."""
        s = self.constitution.score(world, prompt, response)
        s += self.verbosity_bias * self.temperature * len(response.split())
        if self.score_noise:
            s += self.score_noise * self.misreading(prompt, response)
        return s


def judge_labels(judge: Judge, world, records: Sequence[dict], rng: np.random.Generator | int | None = 0) -> list[dict]:
    """Relabel prompt/chosen/rejected ``records`` with ``judge`` (Lesson 18).

    The two responses are shown in a random order; the judge's verdict decides chosen and
    rejected, and a "tie" is broken by a coin flip (a labeler forced to pick), so every input
    pair comes back, with the same responses. Each record gains ``labeler`` (the judge's name),
    ``judge_verdict`` ("first", "second" or "tie", for the order shown), ``judge_tie`` and
    ``same_as_input`` (whether the judge's choice is the input record's chosen response).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = []
    for rec in records:
        a, b = rec["chosen"], rec["rejected"]
        flip = bool(rng.random() < 0.5)
        first, second = (b, a) if flip else (a, b)
        v = judge.verdict(world, rec["prompt"], first, second, rng if judge.noise else None)
        if v == "tie":
            v = "first" if rng.random() < 0.5 else "second"
            tie = True
        else:
            tie = False
        winner = first if v == "first" else second
        chosen, rejected = (a, b) if winner == a else (b, a)
        new = dict(rec)
        new.update(chosen=chosen, rejected=rejected, labeler=judge.name, judge_verdict=v, judge_tie=tie,
                   same_as_input=bool(winner == a), chosen_shown_first=bool(winner == first))
        if "gold_chosen" in rec:
            new["gold_chosen"] = world.gold_reward(rec["prompt"], chosen)
            new["gold_rejected"] = world.gold_reward(rec["prompt"], rejected)
        new.pop("p_label", None)
        out.append(new)
    return out


def disagreements(world, human: Sequence[dict], ai: Sequence[dict], tol: float = 1e-9) -> dict:
    """Where two label sets on the SAME pairs disagree, which one gold agrees with (Lesson 18).

    ``human`` and ``ai`` are records of the same pairs in the same order (``ai`` from
    :func:`judge_labels` on ``human``). Returns counts and shares: ``n``, ``n_disagree``,
    ``gold_sides_with_ai``, ``gold_sides_with_human``, ``gold_tie`` (shares of the
    disagreements), and ``agree_rate``.
    """
    if len(human) != len(ai):
        raise ValueError(f"the label sets have {len(human)} and {len(ai)} records: pass labels of the same pairs")
    if not human:
        raise ValueError("no records")
    dis, g_ai, g_h, g_tie = 0, 0, 0, 0
    for h, a in zip(human, ai):
        if h["prompt"] != a["prompt"] or {h["chosen"], h["rejected"]} != {a["chosen"], a["rejected"]}:
            raise ValueError("the two label sets are not of the same pairs in the same order")
        if h["chosen"] == a["chosen"]:
            continue
        dis += 1
        g_hc, g_ac = world.gold_reward(h["prompt"], h["chosen"]), world.gold_reward(a["prompt"], a["chosen"])
        if g_ac > g_hc + tol:
            g_ai += 1
        elif g_hc > g_ac + tol:
            g_h += 1
        else:
            g_tie += 1
    share = (lambda k: k / dis) if dis else (lambda k: float("nan"))
    return {"n": len(human), "n_disagree": dis, "agree_rate": 1 - dis / len(human),
            "gold_sides_with_ai": share(g_ai), "gold_sides_with_human": share(g_h), "gold_tie": share(g_tie)}
