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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from preflab.data import check_records, encode_pairs, stack_pairs
from preflab.model import load_policy
from preflab.schedule import lr_at, set_lr
from preflab.sequences import encode, hidden_size, pad_id, position_ids_from
from preflab.world import FILLER, KINDS, REFUSALS, as_rng

__all__ = ["RewardModel", "RewardConfig", "POOLINGS", "pool_index", "load_reward_model", "reward_pair_loss",
           "train_reward_model", "score", "score_pairs", "pairwise_accuracy", "accuracy_from_rewards", "reliability",
           "rewardbench_subsets"]

#: Where to read the reward. "last" is correct; the others exist to show what goes wrong.
POOLINGS = ("last", "first", "final_column")


def pool_index(attention_mask: torch.Tensor, pooling: str = "last") -> torch.Tensor:
    """The position each row's reward is read at, shape (B,).

    "last": the last real token, max{t : mask[b, t] = 1} (correct for right and left padding);
    "first": position 0 (sees only the start of the prompt: a bug);
    "final_column": T - 1 for every row (a pad token in right-padded rows: a bug).

    Lesson 04.
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

    ``forward(input_ids, attention_mask)`` returns rewards of shape (B,) on the device of
    ``input_ids`` (the inputs go to the model's device for the pass), read at the last real
    token of each row (see :func:`pool_index`; ``pooling`` may be changed to show the bug).
    Position ids come from the attention mask, so left-padded rows score the same as
    right-padded ones.

    Lesson 04.
    """

    def __init__(self, backbone: torch.nn.Module, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}: choose one of {POOLINGS}")
        self.backbone = backbone
        self.config = backbone.config
        hidden = hidden_size(backbone)
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
        home, device = input_ids.device, self.head.weight.device  # inputs go to the model; rewards come back
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        h = self.hidden_states(input_ids, attention_mask)
        idx = pool_index(attention_mask, self.pooling)
        pooled = h[torch.arange(h.shape[0], device=h.device), idx]
        return self.head(pooled).squeeze(-1).float().to(home)


def load_reward_model(scale: str | None = None, init: str = "sft", pooling: str = "last",
                      device: str | torch.device | None = None, seed: int = 0):
    """A reward model whose backbone is a copy of the policy checkpoint: ``(rm, tokenizer)``.

    ``init`` is the policy stage ("sft" as in InstructGPT, or "base"); the LM head is dropped
    and a fresh scalar head (seeded by ``seed``) is put on the transformer.

    Lesson 04.
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

    Lesson 04.
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


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_pairs(rm: RewardModel, tokenizer, records: Sequence[dict], batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of every record's chosen and rejected response: (r_chosen, r_rejected) arrays. Lesson 04."""
    enc = encode_pairs(tokenizer, records)
    dev = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    r_chosen, r_rejected = [], []
    for s in range(0, len(records), batch_size):
        idx = torch.arange(s, min(len(records), s + batch_size))
        b = stack_pairs(enc, idx, pad_id(tokenizer))
        out = rm(b.input_ids.to(dev), b.attention_mask.to(dev)).cpu()
        r_chosen.append(out[: len(idx)])
        r_rejected.append(out[len(idx):])
    rm.train(was)
    return torch.cat(r_chosen).numpy(), torch.cat(r_rejected).numpy()


@torch.no_grad()
def score(rm: RewardModel, tokenizer, prompts: Sequence[str], responses: Sequence[str],
          batch_size: int = 64) -> np.ndarray:
    """r(x, y) for each (prompt, response), as a numpy array of shape (N,). Lesson 04."""
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
    responses in different rows of a batch can differ in the last bits. Lesson 04."""
    r_chosen, r_rejected = score_pairs(rm, tokenizer, records, batch_size)
    return accuracy_from_rewards(r_chosen, r_rejected)


def accuracy_from_rewards(r_chosen, r_rejected) -> float:
    """Pairwise accuracy from reward arrays: wins count 1, ties (up to float noise) count half. Lesson 04."""
    c, r = np.asarray(r_chosen, dtype=float), np.asarray(r_rejected, dtype=float)
    tie = np.abs(c - r) <= 1e-5 * (1.0 + np.abs(c))
    return float(np.mean(np.where(tie, 0.5, (c > r).astype(float))))


# ----------------------------------------------------------------------------- training
@dataclass
class RewardConfig:
    """Every setting of one reward-model run (recorded in run manifests via ``asdict``). Lesson 04."""

    epochs: int = 1
    """Passes over the records (each in a fresh random order)."""
    batch_size: int = 32
    """Pairs per step (chosen and rejected scored in one forward pass of 2 x batch_size rows)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 10
    """Linear warm-up steps, then cosine decay to ``lr_floor`` of ``lr`` at the last step."""
    lr_floor: float = 0.1
    """Where the cosine ends, as a fraction of ``lr``."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    margin_key: str | None = None
    """Name of a per-record margin column m: the loss asks r_c - r_r >= m (Llama 2; TRL's ``margin``)."""
    center_coef: float = 0.0
    """Weight of (r_c + r_r)^2, which pins the free per-prompt offset near 0 (TRL's center_rewards_coefficient)."""
    eval_every: int | None = None
    """With eval_records: evaluate every this many steps as well as at the end of each epoch."""
    seed: int = 0
    """Seeds the batch order (numpy) and torch."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1 (or None), got {self.eval_every}")


def train_reward_model(rm: RewardModel, tokenizer, records: Sequence[dict], cfg: RewardConfig = RewardConfig(),
                       eval_records: Sequence[dict] | None = None,
                       callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``rm`` in place on prompt/chosen/rejected ``records``; return one dict per step. Lesson 04.

    Each step scores chosen and rejected in ONE forward pass (the two halves concatenated along
    the batch) and minimizes the mean of :func:`reward_pair_loss`. History keys: ``step``,
    ``epoch``, ``lr``, ``loss``, ``accuracy`` (batch share with r_c > r_r, ties half),
    ``margin`` (mean r_c - r_r), ``grad_norm``, ``elapsed_s``; with ``eval_records``,
    ``eval_accuracy`` and ``eval_loss`` after each epoch (and every ``cfg.eval_every`` steps).
    ``callback(step, metrics)`` returning True stops training.
    """
    check_records(records)
    if eval_records is not None:
        check_records(eval_records, "eval_records")
    if cfg.margin_key is not None and any(cfg.margin_key not in r for r in records):
        raise ValueError(f"margin_key {cfg.margin_key!r} is missing from some records")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    pad = pad_id(tokenizer)
    enc = encode_pairs(tokenizer, records)
    margins = (torch.tensor([float(r[cfg.margin_key]) for r in records]) if cfg.margin_key is not None else None)
    n = len(records)
    steps_per_epoch = -(-n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    dev = next(rm.parameters()).device
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    rm.train()
    bar = tqdm(total=total, desc="reward model", disable=not cfg.progress, mininterval=1)
    t0 = time.perf_counter()
    for step in range(total):
        # ---- schedule
        lr = lr_at(step, total, cfg.lr, cfg.warmup_steps, decay="cosine", floor=cfg.lr_floor)
        set_lr(opt, lr)
        # ---- batch: the next rows of this epoch's random order
        k = step % steps_per_epoch
        if k == 0:
            order = rng.permutation(n)
        idx = torch.as_tensor(order[k * cfg.batch_size: (k + 1) * cfg.batch_size])
        # ---- forward: [chosen; rejected] in one pass
        b = stack_pairs(enc, idx, pad)
        out = rm(b.input_ids.to(dev), b.attention_mask.to(dev))
        r_chosen, r_rejected = out[: len(idx)], out[len(idx):]
        # ---- loss: -log sigmoid(r_c - r_r - m) (+ center_coef * (r_c + r_r)^2)
        m = margins[idx].to(dev) if margins is not None else None
        loss = reward_pair_loss(r_chosen, r_rejected, m, cfg.center_coef).mean()
        # ---- backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm or float("inf")).item()
        opt.step()
        # ---- log (and evaluate on held-out pairs when due)
        with torch.no_grad():
            d = r_chosen - r_rejected
            rec = {"step": step, "epoch": step / steps_per_epoch, "lr": lr, "loss": loss.item(),
                   "accuracy": float(((d > 0).float() + 0.5 * (d == 0).float()).mean()),
                   "margin": float(d.mean()), "grad_norm": gn, "elapsed_s": time.perf_counter() - t0}
        due = k == steps_per_epoch - 1 or (cfg.eval_every is not None and (step + 1) % cfg.eval_every == 0)
        if eval_records is not None and due:
            e_c, e_r = score_pairs(rm, tokenizer, eval_records)
            rec["eval_accuracy"] = accuracy_from_rewards(e_c, e_r)
            rec["eval_loss"] = float(-F.logsigmoid(torch.as_tensor(e_c - e_r)).mean())
            rm.train()
        history.append(rec)
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.2f}")
        if callback is not None and callback(step, rec):
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

    Lesson 04.
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

    Lesson 04.
    """
    rng = as_rng(rng)
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
