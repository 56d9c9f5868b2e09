"""ORPO: preference optimization without a reference model (Lesson 17).

ORPO (Hong et al. 2024, "Monolithic preference optimization without reference model") adds a
preference term to the SFT loss instead of measuring the policy against a frozen copy. With
P(y|x) = exp(mean_t log pi(y_t | x, y_<t)) (the per-token AVERAGED log-prob, as in the paper and
TRL), the odds of a response are odds(y|x) = P / (1 - P), and

    log OR   = log odds(y_w|x) - log odds(y_l|x)
             = (a_w - a_l) - (log(1 - exp(a_w)) - log(1 - exp(a_l))),   a = averaged log-prob
    L_OR     = -log sigmoid(log OR)
    L_ORPO   = L_NLL(y_w) + lambda * L_OR

L_NLL is the chosen response's per-token negative log-likelihood (the SFT loss on the winners).
lambda (TRL calls it beta) weighs the preference term. log(1 - exp(a)) is computed with the
two-branch log1mexp (log(-expm1(a)) near 0, log1p(-exp(a)) below -log 2), so the loss is finite
for any averaged log-prob < 0; an average of exactly 0 (probability 1) has infinite odds and is
clamped to -1e-6.

What ORPO gives up: there is no reference, so nothing in the loss holds the policy near the SFT
model; only the NLL term keeps it on the winners. Lesson 17 measures that drift as KL(pi || pi_SFT)
on fresh samples, beside DPO's.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from preflab.data import check_records, encode_pairs, pair_logps
from preflab.sequences import pad_id
from preflab.losses import _as_float_tensor, _check_scalar, _same_shape

__all__ = ["log1mexp", "log_odds", "odds_ratio_loss", "orpo_loss", "ORPOConfig", "train_orpo",
           "evaluate_orpo", "config_dict"]

_LOG_HALF = -math.log(2.0)
#: averaged log-probs at or above this are clamped here (probability 1 has infinite odds)
MAX_AVG_LOGP = -1e-6


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, without cancellation (Maechler 2012) (Lesson 17)."""
    x = _as_float_tensor(x, "x")
    if bool((x > 0).any()):
        raise ValueError("log1mexp needs x <= 0 (x is a log-probability)")
    x = x.clamp(max=MAX_AVG_LOGP)
    return torch.where(x < _LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds(avg_logps):
    """log(P / (1 - P)) with P = exp(avg_logps): a - log(1 - exp(a)) (Lesson 17)."""
    a = _as_float_tensor(avg_logps, "avg_logps")
    return a.clamp(max=MAX_AVG_LOGP) - log1mexp(a)


def odds_ratio_loss(avg_chosen_logps, avg_rejected_logps, lam=1.0):
    """ORPO's odds-ratio term, per example (Lesson 17; Hong et al. 2024, eq. 6-7).

        log OR = log odds(y_w) - log odds(y_l)      from per-token AVERAGED log-probs
        loss   = -lam * log sigmoid(log OR)

    Returns (losses, log_odds_ratio), the second detached (TRL logs its mean as
    ``log_odds_ratio``). Averaged log-probs must be <= 0.
    """
    lam = _check_scalar(lam, "lam", nonneg=True)
    named = {"avg_chosen_logps": _as_float_tensor(avg_chosen_logps, "avg_chosen_logps"),
             "avg_rejected_logps": _as_float_tensor(avg_rejected_logps, "avg_rejected_logps")}
    _same_shape(named)
    c, r = named.values()
    for name, t in named.items():
        if bool((t > 0).any()):
            raise ValueError(f"{name} must be <= 0 (averaged log-probabilities), got a maximum of {float(t.max()):.4g}")
    lor = log_odds(c) - log_odds(r)
    return -lam * F.logsigmoid(lor), lor.detach()


def orpo_loss(avg_chosen_logps, avg_rejected_logps, lam=1.0):
    """The whole ORPO loss, per example (Lesson 17):  -a_w + lam * (-log sigmoid(log OR)).

    -a_w is the chosen response's per-token NLL (a_w its averaged log-prob), averaged over each
    response's own tokens; TRL's ORPOTrainer averages the NLL over all chosen tokens of the batch
    instead (the same when the responses have equal lengths). Returns (losses, nll,
    log_odds_ratio), the last two detached.
    """
    c = _as_float_tensor(avg_chosen_logps, "avg_chosen_logps")
    or_losses, lor = odds_ratio_loss(c, avg_rejected_logps, lam)
    nll = -c
    return nll + or_losses, nll.detach(), lor


@dataclass
class ORPOConfig:
    """Every setting of one ORPO run (Lesson 17; recorded in run manifests via :func:`config_dict`)."""

    lam: float = 1.0
    """lambda, the weight of the odds-ratio term beside the NLL (TRL's ``beta``)"""
    lr: float = 3e-4
    """learning rate (AdamW)"""
    batch_size: int = 32
    """pairs per step"""
    max_steps: int = 24
    """optimizer steps (the pairs are reshuffled each time they run out)"""
    warmup_steps: int = 0
    """linear learning-rate warm-up, in steps"""
    max_grad_norm: float = 1.0
    """clip the gradient's global norm to this"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    seed: int = 0
    """seeds the batch order"""
    progress: bool = True
    """Show a tqdm progress bar."""
    eval_batch_size: int = 128
    """pairs per forward pass in :func:`evaluate_orpo`"""

    def __post_init__(self):
        if self.lam < 0:
            raise ValueError(f"ORPOConfig.lam must be >= 0, got {self.lam}")
        if not self.lr > 0 or not self.max_grad_norm > 0:
            raise ValueError("ORPOConfig.lr and max_grad_norm must be > 0")
        if self.batch_size < 1 or self.max_steps < 1 or self.warmup_steps < 0 or self.eval_batch_size < 1:
            raise ValueError("ORPOConfig.batch_size, max_steps and eval_batch_size must be >= 1, warmup_steps >= 0")


def config_dict(cfg: ORPOConfig) -> dict:
    """The config as a plain dict, for run manifests (Lesson 17)."""
    return asdict(cfg)


def _metrics(losses, nll, lor, ac, ar) -> dict:
    return {"loss": losses.mean().item(), "nll_loss": nll.mean().item(),
            "log_odds_ratio": lor.mean().item(), "rewards/accuracies": (lor > 0).float().mean().item(),
            "logps/chosen_avg": ac.detach().mean().item(), "logps/rejected_avg": ar.detach().mean().item()}


@torch.no_grad()
def evaluate_orpo(policy, tokenizer, records: Sequence[dict], cfg: ORPOConfig = ORPOConfig()) -> dict:
    """ORPO's metrics on held-out pairs, without gradients (Lesson 17). ``rewards/accuracies`` is
    the share of pairs whose log odds ratio is > 0 (the chosen response has the higher odds)."""
    enc = encode_pairs(tokenizer, records)
    pad = pad_id(tokenizer)
    was = policy.training
    policy.eval()
    cs, rs = [], []
    for s in range(0, len(enc), cfg.eval_batch_size):
        c, r = pair_logps(policy, enc, torch.arange(s, min(len(enc), s + cfg.eval_batch_size)), pad)
        cs.append(c.cpu())
        rs.append(r.cpu())
    policy.train(was)
    ac, ar = torch.cat(cs) / enc.chosen_len, torch.cat(rs) / enc.rejected_len
    losses, nll, lor = orpo_loss(ac, ar, cfg.lam)
    return _metrics(losses, nll, lor, ac, ar)


def train_orpo(policy, tokenizer, records: Sequence[dict], cfg: ORPOConfig = ORPOConfig(),
               callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``policy`` in place with ORPO on prompt/chosen/rejected ``records`` (Lesson 17). No
    reference model. callback(step, metrics) after each step; returning True stops training.

    Returns one dict per step (that step's batch, before its update): ``loss``, ``nll_loss``,
    ``log_odds_ratio``, ``rewards/accuracies`` (share with log OR > 0), ``logps/chosen_avg``,
    ``logps/rejected_avg`` (averaged log-probs), ``step``, ``lr``, ``grad_norm``.
    """
    check_records(records)
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters (was it frozen as a reference?)")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(policy.parameters()).device
    enc = encode_pairs(tokenizer, records)
    pad = pad_id(tokenizer)
    n = len(enc)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    order, pos = rng.permutation(n), 0
    policy.eval()  # dropout off
    for step in tqdm(range(cfg.max_steps), desc="orpo", disable=not cfg.progress, mininterval=1):
        t0 = time.perf_counter()
        # ---- learning-rate schedule (linear warm-up, then constant)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + cfg.batch_size > n and pos > 0:
            order, pos = rng.permutation(n), 0
        idx = torch.as_tensor(order[pos: pos + cfg.batch_size])
        pos += cfg.batch_size
        # ---- forward: averaged log-probs of chosen and rejected (one pass on [chosen; rejected])
        pc, pr = pair_logps(policy, enc, idx, pad)
        ac, ar = pc / enc.chosen_len[idx].to(device), pr / enc.rejected_len[idx].to(device)
        # ---- loss: -a_w + lam * (-log sigmoid(log odds(y_w) - log odds(y_l)))
        losses, nll, lor = orpo_loss(ac, ar, cfg.lam)
        loss = losses.mean()
        # ---- backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        # ---- log one dict per step
        m = _metrics(losses, nll, lor, ac, ar)
        m.update(step=step, lr=lr, grad_norm=float(gn), seconds=time.perf_counter() - t0)
        history.append(m)
        if callback is not None and callback(step, m):
            break
    policy.eval()
    return history
