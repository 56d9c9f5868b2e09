"""Direct Preference Optimization (DPO) and its relatives, trained from scratch.

The RLHF objective  max_pi E[r(x, y)] - beta * KL(pi || pi_ref)  has the closed-form optimum
pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x). Solved for the reward,

    r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + beta * log Z(x),

and put into Bradley-Terry, P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l)), the partition
function Z(x) cancels. What is left is a classification loss on the policy itself (eq. 7 of
Rafailov et al. 2023):

    h    = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    loss = -log sigmoid(beta * h)

beta is the KL coefficient: a higher beta keeps the policy closer to the reference.
``beta * (log pi - log pi_ref)`` is the *implicit reward*; TRL logs its batch means as
``rewards/chosen`` and ``rewards/rejected``, the share of pairs where the chosen one is higher
as ``rewards/accuracies`` and the mean difference as ``rewards/margins``.

Log-probs are **summed** over response tokens (EOS included, prompt excluded) unless
``DPOConfig.average_logps=True`` (per-token averages). SimPO always uses averages (its
length normalization is the point of it); IPO is often run on averages too (TRL does), and
the IPO target 1/(2 tau) means something different on each scale. The logged ``logps/chosen``
and ``logps/rejected`` are always the summed ones, as TRL logs them for sigmoid DPO.

Speed (``DPOConfig.speed``, a :class:`DPOSpeed`; each switch gives the same loss and gradients):

* ``concat_forward``: chosen and rejected go through the policy in ONE forward pass,
  concatenated along the batch (instead of two passes).
* ``cache_reference``: the reference log-probs are computed once, up front, without
  gradients and in large batches, and cached per record (instead of a reference forward
  pass at every step).
* ``trim_padding``: each batch is cut to its own longest row (instead of the longest row of
  the whole data set). No sorting, so batches stay random.
* ``pack_sequences`` (off by default): no padding at all. The batch's sequences are packed end
  to end with a block-diagonal causal mask and restarting positions, and the LM head runs only
  where response tokens are predicted; same log-probs up to float rounding, about 1.5x the
  pairs per CPU-second on the tiny model (``make bench``). Needs transformers >= 5.

The data plumbing (validation, encoding, batching, packing, the reference cache) lives in
:mod:`preflab.data`; this file is the algorithm: its config, its loss and its loop. Lesson 07
teaches it; lessons 09, 10 and 13 use its variants.

    from preflab.dpo import DPOConfig, train_dpo
    history = train_dpo(policy, reference, tok, records, DPOConfig(beta=0.1, lr=5e-4, epochs=2))
    history[-1]["rewards/accuracies"]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from preflab.data import (all_pair_logps, check_records, encode_pairs, pair_logps,  # noqa: F401 - re-exported
                          precompute_reference_logps, sample_policy_pairs)
from preflab.losses import (cdpo_loss, dpo_loss, hinge_loss, ipo_loss, preference_metrics,
                            rdpo_loss, robust_dpo_loss, simpo_loss)
from preflab.pairs import drop_empty  # noqa: F401 - re-exported: DPO lessons import it here
from preflab.schedule import lr_at, set_lr
from preflab.sequences import encode, pad_id, pad_to, token_logprobs

__all__ = ["DPOConfig", "DPOSpeed", "LOSS_TYPES", "train_dpo", "preference_loss", "evaluate_pairs",
           "implicit_reward", "precompute_reference_logps", "encode_pairs", "pair_logps", "drop_empty",
           "sample_policy_pairs"]

#: Names as TRL's ``DPOConfig.loss_type`` spells them (TRL's "sigmoid" is plain DPO).
LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "robust", "hinge", "rdpo", "simpo")
NEEDS_REFERENCE = ("sigmoid", "ipo", "cdpo", "robust", "hinge", "rdpo")


@dataclass
class DPOSpeed:
    """How the log-probs are computed: each switch changes speed, never the loss or its gradients. Lesson 07 (speed: make bench)."""

    concat_forward: bool = True
    """Chosen and rejected in ONE forward pass, concatenated along the batch (else two passes)."""
    cache_reference: bool = True
    """Reference log-probs computed once, up front, in large batches (else a reference pass per step)."""
    trim_padding: bool = True
    """Cut each batch to its own longest row (else pad to the data set's longest)."""
    pack_sequences: bool = False
    """No padding at all: sequences packed end to end with a block-diagonal mask (needs transformers >= 5)."""
    ref_batch_size: int = 128
    """Batch size for the no-gradient passes (the reference cache, held-out evaluation)."""


@dataclass
class DPOConfig:
    """Every setting of one preference-optimization run (recorded in run manifests via ``asdict``). Lesson 07."""

    loss_type: str = "sigmoid"
    """"sigmoid" (DPO), "ipo", "cdpo", "robust" (rDPO), "hinge", "rdpo" (length-regularized), "simpo" (no reference)."""
    beta: float = 0.1
    """KL coefficient: higher keeps the policy closer to the reference. For SimPO, the reward scale."""
    tau: float | None = None
    """IPO's regularization; the margin target is 1/(2 tau). None: use beta."""
    eps: float = 0.1
    """cDPO's and rDPO's assumed label-flip rate, in [0, 0.5)."""
    alpha: float = 0.0
    """R-DPO's length coefficient (per response token)."""
    gamma: float = 0.5
    """SimPO's target margin."""
    sft_weight: float = 0.0
    """Weight of an NLL term on the CHOSEN response, -log pi(y_c|x)/|y_c| per pair (RPO; TRL's rpo_alpha).
    DPO fixes only the log-ratio margin and can lower the chosen likelihood too; this term holds it up.
    Averaged over each response's tokens, then over pairs (TRL: over all chosen tokens of the batch)."""
    average_logps: bool = False
    """False sums log-probs over response tokens; True averages them per token. SimPO always averages."""
    lr: float = 5e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 0
    """Linear warm-up steps, then constant."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    batch_size: int = 32
    """Pairs per step."""
    epochs: int = 1
    """Passes over the records (each in a fresh random order)."""
    max_steps: int | None = None
    """If set, the number of steps, overriding epochs (as in TRL): the data is cycled as needed."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    disable_dropout: bool = True
    """Train with dropout off (TRL's default), so the policy's log-probs at step 0 equal the reference's."""
    eval_every: int | None = None
    """With eval_records: evaluate every this many steps (None: once per epoch), and after the last step."""
    seed: int = 0
    """Seeds the batch order (numpy) and torch."""
    progress: bool = True
    """Show a tqdm progress bar."""
    speed: DPOSpeed = field(default_factory=DPOSpeed)
    """How the log-probs are computed (see DPOSpeed); none of it changes the result."""

    def __post_init__(self):
        if isinstance(self.speed, dict):
            self.speed = DPOSpeed(**self.speed)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}: choose one of {LOSS_TYPES}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (it is the KL coefficient), got {self.beta}")
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"eps (the assumed label-flip rate) must be in [0, 0.5), got {self.eps}")
        if self.alpha < 0:
            raise ValueError(f"alpha (R-DPO's length coefficient) must be >= 0, got {self.alpha}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight (the NLL term on chosen responses) must be >= 0, got {self.sft_weight}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.speed.ref_batch_size) < 1:
            raise ValueError(f"speed.ref_batch_size must be >= 1, got {self.speed.ref_batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1 or None, got {self.eval_every}")

    @property
    def ipo_tau(self) -> float:
        return self.beta if self.tau is None else self.tau

    @property
    def uses_average(self) -> bool:
        """Whether the loss sees per-token averaged log-probs (always for SimPO)."""
        return self.average_logps or self.loss_type == "simpo"

    @property
    def needs_reference(self) -> bool:
        return self.loss_type in NEEDS_REFERENCE


# ----------------------------------------------------------------------------- the loss
def preference_loss(cfg: DPOConfig, policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                    chosen_len, rejected_len):
    """Per-pair losses of ``cfg.loss_type`` from SUMMED log-probs, as TRL's ``_compute_loss``: the
    log-ratio margin shared by every variant, then each variant in a few lines (the functions of
    :mod:`preflab.losses`, where each is tested against TRL).

        h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]

    (on per-token averages where the loss uses them). Returns (losses, chosen_rewards,
    rejected_rewards, h): rewards beta * (log pi - log pi_ref), TRL's ``rewards/*``; h detached.

    Lesson 07.
    """
    pc, pr, rc, rr = policy_chosen, policy_rejected, ref_chosen, ref_rejected
    nll_chosen = -pc / chosen_len        # per-token NLL of the chosen response (for sft_weight)
    if cfg.uses_average:
        pc, pr = pc / chosen_len, pr / rejected_len
        if rc is not None:
            rc, rr = rc / chosen_len, rr / rejected_len
    lt, beta = cfg.loss_type, cfg.beta
    if lt == "simpo":       # SimPO: -log sigmoid(beta * (avg_w - avg_l) - gamma); no reference
        h = (pc - pr).detach()
        losses, cr, rj = simpo_loss(pc, pr, beta, cfg.gamma)
    else:
        h = ((pc - rc) - (pr - rr)).detach()
        if lt == "sigmoid":   # DPO: -log sigmoid(beta * h)
            losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
        elif lt == "ipo":     # IPO: (h - 1/(2 tau))^2
            losses, cr, rj = ipo_loss(pc, pr, rc, rr, cfg.ipo_tau)
        elif lt == "cdpo":    # cDPO: -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
            losses, cr, rj = cdpo_loss(pc, pr, rc, rr, beta, cfg.eps)
        elif lt == "robust":  # rDPO: the same, unbiased for flip rate eps
            losses, cr, rj = robust_dpo_loss(pc, pr, rc, rr, beta, cfg.eps)
        elif lt == "hinge":   # SLiC: max(0, 1 - beta h)
            losses, cr, rj = hinge_loss(pc, pr, rc, rr, beta)
        elif lt == "rdpo":    # R-DPO: -log sigmoid(beta h + alpha (|y_w| - |y_l|))
            losses, cr, rj = rdpo_loss(pc, pr, rc, rr, beta, cfg.alpha, chosen_len, rejected_len)
        else:  # pragma: no cover (DPOConfig validates loss_type)
            raise ValueError(lt)
    if cfg.sft_weight:      # RPO: + sft_weight * NLL(y_w) / |y_w|
        losses = losses + cfg.sft_weight * nll_chosen
    return losses, cr, rj, h


def _metrics(losses, cr, rj, h, pc, pr) -> dict:
    m = {"loss": losses.mean().item()}
    m.update(preference_metrics(cr, rj))
    m["logps/chosen"] = pc.detach().mean().item()
    m["logps/rejected"] = pr.detach().mean().item()
    m["logratio_margin"] = h.mean().item()  # mean h (of the log-probs the loss saw)
    return m


@torch.no_grad()
def evaluate_pairs(policy, tokenizer, records: Sequence[dict], config: DPOConfig, reference=None,
                   ref_logps: dict | None = None, batch_size: int = 128) -> dict:
    """The training metrics (loss, rewards/*, logps/*) on held-out pairs, without gradients.

    Pass ``ref_logps`` from :func:`precompute_reference_logps` (or a ``reference`` model).
    ``rewards/accuracies`` here is the held-out preference accuracy of the implicit reward.
    Lessons 07 and 09.
    """
    enc = encode_pairs(tokenizer, records)
    pc, pr = all_pair_logps(policy, enc, pad_id(tokenizer), batch_size)
    rc = rr = None
    if config.needs_reference:
        if ref_logps is None:
            if reference is None:
                raise ValueError(f"loss_type {config.loss_type!r} needs reference log-probs: pass reference= "
                                 f"or ref_logps= (from precompute_reference_logps)")
            ref_logps = precompute_reference_logps(reference, tokenizer, records, batch_size)
        rc, rr = ref_logps["chosen"], ref_logps["rejected"]
    losses, cr, rj, h = preference_loss(config, pc, pr, rc, rr, enc.chosen_len.float(), enc.rejected_len.float())
    return _metrics(losses, cr, rj, h, pc, pr)


@torch.no_grad()
def implicit_reward(policy, reference, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                    beta: float, batch_size: int = 128, average: bool = False) -> np.ndarray:
    """DPO's implicit reward  beta * (log pi(y|x) - log pi_ref(y|x))  per (prompt, response). Lesson 07.

    Summed log-probs by default (``average=True``: per-token averages). It equals the reward
    of the RLHF problem that ``policy`` solves exactly, up to the per-prompt constant
    beta * log Z(x), so compare it only between responses to the same prompt.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    out = []
    pad = pad_id(tokenizer)
    dev = next(policy.parameters()).device
    for s in range(0, len(prompts), batch_size):
        b = encode(tokenizer, prompts[s: s + batch_size], responses[s: s + batch_size])
        T = int(b.attention_mask.sum(-1).max())
        b = pad_to(b, T, pad).to(dev)
        lp = token_logprobs(policy, b.input_ids, b.attention_mask, b.response_mask).sum(-1)
        ref_b = b.to(next(reference.parameters()).device)
        lp_ref = token_logprobs(reference, ref_b.input_ids, ref_b.attention_mask, ref_b.response_mask).sum(-1)
        n = b.response_mask[:, 1:].sum(-1).to(lp.dtype)
        d = lp - lp_ref.to(lp.device)
        out.append((beta * (d / n if average else d)).cpu())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- training
def train_dpo(policy, reference, tokenizer, records: Sequence[dict], cfg: DPOConfig = DPOConfig(),
              eval_records: Sequence[dict] | None = None,
              callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``policy`` in place on preference ``records``; return the history, one dict per step.

    Each dict holds TRL's metric names, measured on that step's batch before its update:
    ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
    ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (summed log-probs), plus
    ``logratio_margin`` (mean h), ``step``, ``epoch``, ``lr``, ``grad_norm``, ``elapsed_s``. With
    ``eval_records``, every ``cfg.eval_every`` steps (default: once per epoch) and after the last
    step, the same metrics on the held-out pairs are added with an ``eval_`` prefix (the policy
    as it is after that step's update).

    ``reference`` is the frozen model the log-ratios are taken against (usually the SFT policy
    before training; None only for SimPO). ``callback(step, metrics)`` is called after each
    step; if it returns True, training stops (early stopping).

    Lesson 07.
    """
    # ---- setup: data, reference log-probs, optimizer
    check_records(records)
    if eval_records is not None:
        check_records(eval_records, "eval_records")
    if cfg.needs_reference and reference is None:
        raise ValueError(f"loss_type {cfg.loss_type!r} needs a reference model (the frozen SFT policy); "
                         f"only 'simpo' trains without one")
    if reference is not None and reference is policy:
        raise ValueError("reference is the policy itself: pass a frozen copy (copy.deepcopy(policy)) "
                         "or load it again with preflab.model.load_policy()")
    if not any(p.requires_grad for p in policy.parameters()):
        raise ValueError("the policy has no trainable parameters (requires_grad is False everywhere): "
                         "was it frozen as someone's reference? Train a fresh copy.deepcopy of the SFT model")
    sp = cfg.speed
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    pad = pad_id(tokenizer)
    enc = encode_pairs(tokenizer, records)
    n = len(enc)
    chosen_len, rejected_len = enc.chosen_len.float(), enc.rejected_len.float()
    if reference is not None:
        reference.eval()  # frozen: only ever run under torch.no_grad()
    ref_chosen = ref_rejected = None
    if cfg.needs_reference and sp.cache_reference:
        ref_chosen, ref_rejected = all_pair_logps(reference, enc, pad, sp.ref_batch_size, cfg.progress,
                                                  "reference log-probs", pack=sp.pack_sequences)
    eval_ref = None
    if eval_records is not None and cfg.needs_reference:
        eval_ref = precompute_reference_logps(reference, tokenizer, eval_records, sp.ref_batch_size)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs
    eval_every = cfg.eval_every or steps_per_epoch
    device = next(policy.parameters()).device
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    history: list[dict] = []
    policy.train(not cfg.disable_dropout)
    order = np.array([], dtype=np.int64)
    bar = tqdm(total=total, desc=f"dpo ({cfg.loss_type})", disable=not cfg.progress, mininterval=1)
    t0 = time.perf_counter()
    for step in range(total):
        # ---- schedule
        lr = lr_at(step, total, cfg.lr, cfg.warmup_steps)
        set_lr(opt, lr)
        # ---- batch: the next rows of this epoch's random order
        epoch_pos = step % steps_per_epoch
        if epoch_pos == 0:
            order = rng.permutation(n)
        idx = torch.as_tensor(order[epoch_pos * cfg.batch_size: (epoch_pos + 1) * cfg.batch_size])
        # ---- forward: summed response log-probs of both sides, policy and reference
        pc, pr = pair_logps(policy, enc, idx, pad, sp.concat_forward, sp.trim_padding, sp.pack_sequences)
        rc = rr = None
        if cfg.needs_reference:
            if sp.cache_reference:
                rc, rr = ref_chosen[idx].to(device), ref_rejected[idx].to(device)
            else:
                with torch.no_grad():
                    rc, rr = pair_logps(reference, enc, idx, pad, sp.concat_forward, sp.trim_padding,
                                        sp.pack_sequences)
        # ---- loss: DPO's -log sigmoid(beta * h), h the log-ratio margin (each variant in preference_loss)
        losses, cr, rj, h = preference_loss(cfg, pc, pr, rc, rr, chosen_len[idx].to(device),
                                            rejected_len[idx].to(device))
        loss = losses.mean()
        # ---- backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm).item()
        else:
            gn = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in policy.parameters()
                                      if p.grad is not None)))
        opt.step()
        # ---- log (and evaluate on held-out pairs when due)
        m = _metrics(losses, cr, rj, h, pc, pr)
        m.update(step=step, epoch=step / steps_per_epoch, lr=lr, grad_norm=gn,
                 elapsed_s=time.perf_counter() - t0)
        if eval_records is not None and ((step + 1) % eval_every == 0 or step == total - 1):
            ev = evaluate_pairs(policy, tokenizer, eval_records, cfg, ref_logps=eval_ref,
                                batch_size=sp.ref_batch_size)
            m.update({f"eval_{k}": v for k, v in ev.items()})
            policy.train(not cfg.disable_dropout)
        history.append(m)
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['rewards/accuracies']:.2f}")
        if callback is not None and callback(step, m):
            break
    bar.close()
    policy.eval()
    return history


def config_dict(config: DPOConfig) -> dict:
    """The config as a plain dict (for run manifests). Lesson 07."""
    return asdict(config)
