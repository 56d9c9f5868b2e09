"""Held-out evaluation of a policy on the world: the metrics every lesson reports.

``evaluate_policy`` samples one response per prompt and measures, against the *gold* reward
(never the proxy being optimized):

* ``gold``: mean gold reward;
* ``kl``: KL(pi || pi_ref) estimated per sequence from the samples,
  mean over samples of  log pi(y|x) - log pi_ref(y|x)  (summed over response tokens, the k1
  estimator; unbiased, may be negative on a small sample);
* ``length``: mean number of words;
* ``refusal_unsafe`` / ``refusal_benign``: refusal rate on unsafe requests and on benign
  look-alikes (over-refusal), reported separately, never as one "safety" number;
* ``arith_acc``: side-skill accuracy (for the alignment tax);
* ``well_formed``: share of responses that parse without a garbled sentence.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from preflab.model import DecodingConfig, generate, sequence_logprobs
from preflab.world import World, parse_response


@torch.no_grad()
def sample_and_score(policy, tokenizer, world: World, prompts: Sequence[str],
                     decoding: DecodingConfig = DecodingConfig(), seed: int = 0, reference=None,
                     batch_size: int = 64) -> dict:
    """Sample one response per prompt; return texts, gold rewards and (with ``reference``)
    the per-sequence log-ratio log pi(y|x) - log pi_ref(y|x). Lesson 00 (and every held-out measurement after it)."""
    texts, batch = generate(policy, tokenizer, prompts, decoding, seed=seed, return_ids=True,
                            batch_size=batch_size)
    out = {"prompts": list(prompts), "responses": texts,
           "gold": np.array([world.gold_reward(p, t) for p, t in zip(prompts, texts)])}
    if reference is not None:
        ratios = []
        for s in range(0, len(prompts), batch_size):
            sl = slice(s, s + batch_size)
            ids, attn, resp = batch.input_ids[sl], batch.attention_mask[sl], batch.response_mask[sl]
            dev = next(policy.parameters()).device
            ids, attn, resp = ids.to(dev), attn.to(dev), resp.to(dev)
            lp = sequence_logprobs(policy, ids, attn, resp)
            lp_ref = sequence_logprobs(reference, ids, attn, resp)
            ratios.append((lp - lp_ref).cpu())
        out["log_ratio"] = torch.cat(ratios).numpy()
    return out


def summarize(world: World, prompts: Sequence[str], responses: Sequence[str], gold=None,
              log_ratio=None) -> dict:
    """The standard metrics from prompts, responses (and gold rewards, log-ratios if known). Lesson 00 (and every held-out measurement after it)."""
    gold = np.array([world.gold_reward(p, r) for p, r in zip(prompts, responses)]) if gold is None else np.asarray(gold)
    kinds = np.array([world.kind(p) for p in prompts])
    parsed = [parse_response(r) for r in responses]
    refused = np.array([q.refused for q in parsed])

    def rate(mask, values):
        return float(values[mask].mean()) if mask.any() else float("nan")

    arith = kinds == "arith"
    arith_ok = np.array([world.is_correct_arith(p, r) for p, r, a in zip(prompts, responses, arith) if a])
    metrics = {
        "gold": float(gold.mean()),
        "gold_se": float(gold.std(ddof=1) / np.sqrt(len(gold))) if len(gold) > 1 else float("nan"),
        "length": float(np.mean([q.n_words for q in parsed])),
        "refusal_unsafe": rate(kinds == "unsafe", refused),
        "refusal_benign": rate(kinds == "benign", refused),
        "arith_acc": float(arith_ok.mean()) if arith_ok.size else float("nan"),
        "well_formed": float(np.mean([q.garbled == 0 and q.n_words > 0 for q in parsed])),
        "n": len(prompts),
    }
    if log_ratio is not None:
        metrics["kl"] = float(np.mean(log_ratio))
    return metrics


def evaluate_policy(policy, tokenizer, world: World, prompts: Sequence[str], reference=None,
                    decoding: DecodingConfig = DecodingConfig(), seed: int = 0) -> dict:
    """Sample on ``prompts`` and return :func:`summarize`'s metrics (with ``kl`` if a reference is given). Lesson 00 (and every held-out measurement after it)."""
    s = sample_and_score(policy, tokenizer, world, prompts, decoding, seed, reference)
    return summarize(world, prompts, s["responses"], s["gold"], s.get("log_ratio"))


def heldout_prompts(world: World, n: int, kind: str | None = None, seed: int = 10_000) -> list[str]:
    """Evaluation prompts from a stream separate from training streams (seed 10000 by convention). Lesson 00 (and every held-out measurement after it)."""
    return world.sample_prompts(n, kind=kind, rng=seed)


def win_rate(world: World, prompts: Sequence[str], a: Sequence[str], b: Sequence[str],
             judge: Callable[[str, str, str], float] | None = None) -> float:
    """Share of prompts where response ``a`` beats ``b`` on the gold reward (ties count half),
    or under ``judge(prompt, a, b) -> P(a wins)`` if given. Lesson 00 (and every held-out measurement after it)."""
    if judge is None:
        ga = np.array([world.gold_reward(p, r) for p, r in zip(prompts, a)])
        gb = np.array([world.gold_reward(p, r) for p, r in zip(prompts, b)])
        return float(np.mean((ga > gb) + 0.5 * (ga == gb)))
    return float(np.mean([judge(p, x, y) for p, x, y in zip(prompts, a, b)]))
