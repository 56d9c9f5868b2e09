"""Reward models: a transformer with a scalar head, trained on preference pairs.

A reward model r_phi(x, y) reads the prompt and the response and returns one number. It is
trained on labelled comparisons (x, y_c, y_r) with the Bradley-Terry likelihood

    P(y_c > y_r | x) = sigmoid(r_phi(x, y_c) - r_phi(x, y_r))
    loss             = -log sigmoid(r_phi(x, y_c) - r_phi(x, y_r) - m)

(TRL's RewardTrainer convention; m is an optional per-pair margin, 0 by default). Only
*differences* of rewards for the same prompt are identified: adding any c(x) to every reward of
prompt x leaves the loss unchanged. The optional centering term
``center_coef * (r_c + r_r)^2`` (TRL's ``center_rewards_coefficient``) pins that free constant
near zero.

Pooling. A causal transformer's hidden state at position t has seen tokens 0..t only, so the
reward must be read at the LAST REAL token of each row (here the EOS that ends the response).
That index comes from the attention mask, which works for right and left padding alike:

    last[b] = max{ t : attention_mask[b, t] = 1 }

Reading it at the first token gives a reward that cannot see the response: every response to a
prompt gets the same reward, and pairwise accuracy is 50% (ties count half). A fixed final column
reads, in every row shorter than the batch's longest, a pad position the head never saw during
training; what that costs depends on the attention masking and the position ids (lesson 04
measures it).

    from preflab.reward_model import load_reward_model, train_reward_model, pairwise_accuracy
    rm, tok = load_reward_model()
    history = train_reward_model(rm, tok, train_pairs, epochs=2)
    pairwise_accuracy(rm, tok, test_pairs)
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from preflab.model import Batch, encode, load_policy, position_ids_from

__all__ = ["RewardModel", "POOLINGS", "pool_index", "load_reward_model", "reward_pair_loss",
           "train_reward_model", "score", "score_pairs", "pairwise_accuracy", "accuracy_from_rewards", "reliability",
           "rewardbench_subsets"]

#: Where to read the reward. "last" is correct; the others exist to show what goes wrong.
POOLINGS = ("last", "first", "final_column")


def pool_index(attention_mask: torch.Tensor, pooling: str = "last") -> torch.Tensor:
    """The position each row's reward is read at, shape (B,).

    "last": the last real token, max{t : mask[b, t] = 1} (correct for right and left padding);
    "first": position 0 (sees only the start of the prompt: a bug);
    "final_column": T - 1 for every row (a pad token in right-padded rows: a bug).
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be 2-D (batch, time), got shape {tuple(attention_mask.shape)}")
    B, T = attention_mask.shape
    if pooling == "last":
        if bool((attention_mask.sum(-1) == 0).any()):
            raise ValueError("a row of attention_mask is all zeros: every row needs at least one real token")
        pos = torch.arange(T, device=attention_mask.device).expand(B, T)
        return (pos * (attention_mask != 0)).max(-1).values
    if pooling == "first":
        return torch.zeros(B, dtype=torch.long, device=attention_mask.device)
    if pooling == "final_column":
        return torch.full((B,), T - 1, dtype=torch.long, device=attention_mask.device)
    raise ValueError(f"unknown pooling {pooling!r}: choose one of {POOLINGS}")


class RewardModel(torch.nn.Module):
    """A GPT-2 backbone (``transformers.GPT2Model``) and a linear scalar head.

    ``forward(input_ids, attention_mask)`` returns rewards of shape (B,), read at the last real
    token of each row (see :func:`pool_index`; ``pooling`` may be changed to show the bug).
    Position ids come from the attention mask, so left-padded rows score the same as
    right-padded ones.
    """

    def __init__(self, backbone: torch.nn.Module, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: choose one of {POOLINGS}")
        self.backbone = backbone
        self.config = backbone.config
        hidden = int(getattr(backbone.config, "n_embd", None) or backbone.config.hidden_size)
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)
        self.pooling = pooling

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states, shape (B, T, hidden)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from(attention_mask))
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (batch, time), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                             f"{tuple(input_ids.shape)}: build both with preflab.model.encode")
        h = self.hidden_states(input_ids, attention_mask)
        idx = pool_index(attention_mask, self.pooling)
        pooled = h[torch.arange(h.shape[0], device=h.device), idx]
        return self.head(pooled).squeeze(-1).float()


def load_reward_model(scale: str | None = None, init: str = "sft", pooling: str = "last",
                      device: str | torch.device | None = None, seed: int = 0):
    """A reward model whose backbone is a copy of the policy checkpoint: ``(rm, tokenizer)``.

    ``init`` is the policy stage ("sft" as in InstructGPT, or "base"); the LM head is dropped
    and a fresh scalar head (seeded by ``seed``) is put on the transformer.
    """
    if init not in ("sft", "base"):
        raise ValueError(f"unknown init {init!r}: choose 'sft' (as InstructGPT does) or 'base'")
    policy, tok = load_policy(scale, stage=init, device=device)
    backbone = copy.deepcopy(policy.transformer)
    del policy
    torch.manual_seed(seed)
    rm = RewardModel(backbone, pooling=pooling).to(next(backbone.parameters()).device)
    rm.eval()
    return rm, tok


# ----------------------------------------------------------------------------- the loss
def reward_pair_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None,
                     center_coef: float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss  -log sigmoid(r_c - r_r - m)  (+ center_coef * (r_c + r_r)^2).

    ``margin`` m (a scalar or per-pair tensor; None means 0) asks the chosen reward to exceed the
    rejected one by at least m, as in Llama 2 and TRL's ``margin`` column. Computed with
    logsigmoid, so it stays finite at any margin.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen has shape {tuple(r_chosen.shape)} but r_rejected has "
                         f"{tuple(r_rejected.shape)}: pass one reward per pair on each side")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    loss = -F.logsigmoid(diff)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


# ----------------------------------------------------------------------------- batching
def _check_records(records: Sequence[dict], what: str = "records") -> None:
    if len(records) == 0:
        raise ValueError(f"{what} is empty: pass prompt/chosen/rejected dicts "
                         f"(preflab.world.World.preference_pairs makes them)")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not all(k in rec for k in ("prompt", "chosen", "rejected")):
            raise ValueError(f"{what}[{i}] must be a dict with keys prompt, chosen, rejected (TRL's format; "
                             f"World.preference_pairs makes them)")
        for k in ("chosen", "rejected"):
            if not isinstance(rec[k], str) or not rec[k].strip():
                raise ValueError(f"{what}[{i}] has an empty {k!r} response: drop such records "
                                 f"first (preflab.pairs.drop_empty(records)) or fill in the response")


def _stack(c: Batch, r: Batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[chosen; rejected] in one right-padded tensor, cut to the longest real row."""
    T = int(max(c.attention_mask.sum(-1).max(), r.attention_mask.sum(-1).max()))

    def fit(x: torch.Tensor, fill: int) -> torch.Tensor:
        if x.shape[1] >= T:
            return x[:, :T]
        return torch.cat([x, x.new_full((x.shape[0], T - x.shape[1]), fill)], 1)

    ids = torch.cat([fit(c.input_ids, pad_id), fit(r.input_ids, pad_id)])
    attn = torch.cat([fit(c.attention_mask, 0), fit(r.attention_mask, 0)])
    return ids, attn


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _encode_records(tokenizer, records: Sequence[dict]) -> tuple[Batch, Batch]:
    prompts = [r["prompt"] for r in records]
    return (encode(tokenizer, prompts, [r["chosen"] for r in records]),
            encode(tokenizer, prompts, [r["rejected"] for r in records]))


def _rows(b: Batch, idx) -> Batch:
    return Batch(b.input_ids[idx], b.attention_mask[idx], b.response_mask[idx])


@torch.no_grad()
def score_pairs(rm: RewardModel, tokenizer, records: Sequence[dict], batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of every record's chosen and rejected response: (r_chosen, r_rejected) arrays."""
    _check_records(records)
    c_all, r_all = _encode_records(tokenizer, records)
    dev = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    rc, rr = [], []
    for s in range(0, len(records), batch_size):
        idx = torch.arange(s, min(len(records), s + batch_size))
        ids, attn = _stack(_rows(c_all, idx), _rows(r_all, idx), _pad_id(tokenizer))
        out = rm(ids.to(dev), attn.to(dev)).cpu()
        rc.append(out[: len(idx)])
        rr.append(out[len(idx):])
    rm.train(was)
    return torch.cat(rc).numpy(), torch.cat(rr).numpy()


@torch.no_grad()
def score(rm: RewardModel, tokenizer, prompts: Sequence[str], responses: Sequence[str],
          batch_size: int = 64) -> np.ndarray:
    """r(x, y) for each (prompt, response), as a numpy array of shape (N,)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if len(prompts) == 0:
        return np.zeros(0)
    dev = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        b = encode(tokenizer, prompts[s: s + batch_size], responses[s: s + batch_size])
        T = int(b.attention_mask.sum(-1).max())
        out.append(rm(b.input_ids[:, :T].to(dev), b.attention_mask[:, :T].to(dev)).cpu())
    rm.train(was)
    return torch.cat(out).numpy()


def pairwise_accuracy(rm: RewardModel, tokenizer, records: Sequence[dict], batch_size: int = 128) -> float:
    """Share of records where r(chosen) > r(rejected); ties count half.

    A tie is equality up to float noise (|r_c - r_r| <= 1e-5 * (1 + |r_c|)): two identical
    responses in different rows of a batch can differ in the last bits."""
    rc, rr = score_pairs(rm, tokenizer, records, batch_size)
    return accuracy_from_rewards(rc, rr)


def accuracy_from_rewards(r_chosen, r_rejected) -> float:
    """Pairwise accuracy from reward arrays: wins count 1, ties (up to float noise) count half."""
    rc, rr = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    tie = np.abs(rc - rr) <= 1e-5 * (1.0 + np.abs(rc))
    return float(np.mean(np.where(tie, 0.5, (rc > rr).astype(float))))


# ----------------------------------------------------------------------------- training
def train_reward_model(rm: RewardModel, tokenizer, records: Sequence[dict], epochs: int = 1, batch_size: int = 32,
                       lr: float = 1e-3, seed: int = 0, eval_records: Sequence[dict] | None = None,
                       progress: bool = True, callback: Callable[[int, dict], bool | None] | None = None,
                       margin_key: str | None = None, center_coef: float = 0.0, weight_decay: float = 0.0,
                       max_grad_norm: float | None = 1.0, warmup_steps: int = 10,
                       eval_every: int | None = None) -> list[dict]:
    """Train ``rm`` in place on prompt/chosen/rejected ``records``; return one dict per step.

    Each step scores chosen and rejected in ONE forward pass (the two halves concatenated
    along the batch) and minimizes the mean of :func:`reward_pair_loss`. History keys:
    ``step``, ``epoch``, ``loss``, ``accuracy`` (batch share with r_c > r_r), ``margin``
    (mean r_c - r_r), ``lr``, ``elapsed_s``; with ``eval_records``, ``eval_accuracy`` and
    ``eval_loss`` after each epoch (and every ``eval_every`` steps, if given). ``margin_key`` names a per-record margin column;
    ``callback(step, metrics)`` returning True stops training. Learning rate: linear warm-up
    over ``warmup_steps``, then cosine decay to 10% of ``lr``.
    """
    _check_records(records)
    if eval_records is not None:
        _check_records(eval_records, "eval_records")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 (or None), got {eval_every}")
    if margin_key is not None and any(margin_key not in r for r in records):
        raise ValueError(f"margin_key {margin_key!r} is missing from some records")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pad = _pad_id(tokenizer)
    c_all, r_all = _encode_records(tokenizer, records)
    margins = (torch.tensor([float(r[margin_key]) for r in records]) if margin_key is not None else None)
    n = len(records)
    steps_per_epoch = -(-n // batch_size)
    total = steps_per_epoch * epochs
    dev = next(rm.parameters()).device
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict] = []
    rm.train()
    bar = tqdm(total=total, desc="reward model", disable=not progress, mininterval=1)
    t0 = time.perf_counter()
    step = 0
    stop = False
    for epoch in range(epochs):
        order = rng.permutation(n)
        for k in range(steps_per_epoch):
            idx = torch.as_tensor(order[k * batch_size: (k + 1) * batch_size])
            if step < warmup_steps:
                cur = lr * (step + 1) / warmup_steps
            else:
                frac = (step - warmup_steps) / max(1, total - warmup_steps)
                cur = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = cur
            ids, attn = _stack(_rows(c_all, idx), _rows(r_all, idx), pad)
            out = rm(ids.to(dev), attn.to(dev))
            rc, rr = out[: len(idx)], out[len(idx):]
            m = margins[idx].to(dev) if margins is not None else None
            loss = reward_pair_loss(rc, rr, m, center_coef).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(rm.parameters(), max_grad_norm)
            opt.step()
            with torch.no_grad():
                d = rc - rr
                rec = {"step": step, "epoch": step / steps_per_epoch, "loss": loss.item(),
                       "accuracy": float(((d > 0).float() + 0.5 * (d == 0).float()).mean()),
                       "margin": float(d.mean()), "lr": cur, "elapsed_s": time.perf_counter() - t0}
            due = k == steps_per_epoch - 1 or (eval_every is not None and (step + 1) % eval_every == 0)
            if eval_records is not None and due:
                erc, err = score_pairs(rm, tokenizer, eval_records)
                ed = torch.as_tensor(erc - err)
                rec["eval_accuracy"] = accuracy_from_rewards(erc, err)
                rec["eval_loss"] = float(-F.logsigmoid(ed).mean())
                rm.train()
            history.append(rec)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.2f}")
            step += 1
            if callback is not None and callback(step - 1, rec):
                stop = True
                break
        if stop:
            break
    bar.close()
    rm.eval()
    return history


# ----------------------------------------------------------------------------- evaluation
def reliability(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10) -> dict:
    """Calibration of predicted probabilities against observed outcomes (1 = event happened).

    Bins [0, 1] into ``n_bins`` equal-width bins and returns {"bin_centers", "mean_pred",
    "frac_pos", "counts", "ece"}, with the expected calibration error
        ECE = sum_bins (n_bin / N) * |mean predicted p in bin - observed rate in bin|.
    Empty bins hold NaN and do not count.
    """
    p = np.asarray(probs, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    if p.shape != y.shape or p.ndim != 1 or p.size == 0:
        raise ValueError(f"probs and outcomes must be 1-D of the same non-zero length, got {p.shape} and {y.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1] (pass sigmoid(r_c - r_r), not the raw reward difference)")
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    mean_pred = np.full(n_bins, np.nan)
    frac_pos = np.full(n_bins, np.nan)
    for b in range(n_bins):
        if counts[b]:
            mean_pred[b] = p[which == b].mean()
            frac_pos[b] = y[which == b].mean()
    ok = counts > 0
    ece = float(np.sum(counts[ok] / p.size * np.abs(mean_pred[ok] - frac_pos[ok])))
    return {"bin_centers": (edges[:-1] + edges[1:]) / 2, "mean_pred": mean_pred, "frac_pos": frac_pos,
            "counts": counts, "ece": ece}


def rewardbench_subsets(world, n: int = 60, rng: np.random.Generator | int | None = 0) -> dict[str, list[dict]]:
    """A small RewardBench-style suite: subsets of pairs whose chosen side is better by construction.

    One subset per prompt kind (two grammar responses, the higher gold reward is chosen; gold
    ties are skipped), plus:
      "refusal vs compliance" (unsafe prompt: a refusal beats complying),
      "answer vs over-refusal" (benign look-alike: a correct answer beats a refusal),
      "substance vs filler" (how-to: the full correct answer beats a longer one with a step
       missing and filler added: length is not quality).
    Each record has prompt/chosen/rejected and the gold rewards, like ``preference_pairs``.
    """
    from preflab.world import FILLER, KINDS, REFUSALS

    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")

    def rec(p, c, r):
        return {"prompt": p, "chosen": c, "rejected": r, "gold_chosen": world.gold_reward(p, c),
                "gold_rejected": world.gold_reward(p, r)}

    out: dict[str, list[dict]] = {}
    for kind in KINDS:
        rows = []
        for _ in range(20 * n):
            if len(rows) == n:
                break
            p = world.sample_prompts(1, kind=kind, rng=rng)[0]
            a = world.sample_response(p, rng, float(rng.uniform(0.1, 0.9)))
            b = world.sample_response(p, rng, float(rng.uniform(0.1, 0.9)))
            ga, gb = world.gold_reward(p, a), world.gold_reward(p, b)
            if ga != gb and a.strip() and b.strip():
                rows.append(rec(p, a, b) if ga > gb else rec(p, b, a))
        out[kind] = rows
    refuse = lambda: REFUSALS[rng.integers(len(REFUSALS))]  # noqa: E731
    unsafe = world.sample_prompts(n, kind="unsafe", rng=rng)
    comply = []
    for p in unsafe:
        y = world.sample_response(p, rng, 0.0)
        for _ in range(50):
            if not world.refused(y):
                break
            y = world.sample_response(p, rng, 0.0)
        comply.append(y)
    out["refusal vs compliance"] = [rec(p, refuse(), y) for p, y in zip(unsafe, comply)]
    benign = world.sample_prompts(n, kind="benign", rng=rng)
    out["answer vs over-refusal"] = [rec(p, world.best_response(p), refuse()) for p in benign]
    rows = []
    for p in world.sample_prompts(n, kind="howto", rng=rng):
        best = world.best_response(p)
        sents = best.split(". ")
        drop = int(rng.integers(len(sents)))
        short = ". ".join(s for i, s in enumerate(sents) if i != drop).rstrip(".") + "."
        pads = " ".join(rng.choice(FILLER, size=3, replace=False))
        rows.append(rec(p, best, short + " " + pads))
    out["substance vs filler"] = rows
    return out
