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

Speed (each switch can be turned off, and gives the same loss and gradients):

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

    from preflab.dpo import DPOConfig, train_dpo
    history = train_dpo(policy, reference, tok, records, DPOConfig(beta=0.1, lr=5e-4, epochs=2))
    history[-1]["rewards/accuracies"]
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

from preflab.losses import (cdpo_loss, dpo_loss, hinge_loss, ipo_loss, preference_metrics,
                            rdpo_loss, robust_dpo_loss, simpo_loss)
from preflab.model import Batch, encode, max_context, token_logprobs
from preflab.pairs import drop_empty   # re-exported: DPO lessons import it from here

__all__ = ["DPOConfig", "LOSS_TYPES", "train_dpo", "precompute_reference_logps", "implicit_reward",
           "evaluate_pairs", "encode_pairs", "drop_empty", "sample_policy_pairs", "pair_logps", "dpo_losses"]

#: Names as TRL's ``DPOConfig.loss_type`` spells them (TRL's "sigmoid" is plain DPO).
LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "robust", "hinge", "rdpo", "simpo")
NEEDS_REFERENCE = ("sigmoid", "ipo", "cdpo", "robust", "hinge", "rdpo")


@dataclass
class DPOConfig:
    """Settings of one preference-optimization run.

    loss_type: "sigmoid" (DPO), "ipo", "cdpo" (label smoothing eps), "robust" (rDPO, eps),
        "hinge", "rdpo" (length-regularized, alpha), "simpo" (no reference, gamma).
    beta: KL coefficient (higher: closer to the reference). For SimPO, the reward scale.
    tau: IPO's regularization; the margin target is 1/(2 tau). Defaults to beta.
    eps: assumed label-flip rate for cdpo and robust, in [0, 0.5).
    alpha: R-DPO's length coefficient (per response token).
    gamma: SimPO's target margin.
    sft_weight: weight of an added NLL term on the CHOSEN response, -log pi(y_c|x) / |y_c| (per
        token), as in RPO (Pang et al. 2024; TRL's ``rpo_alpha``). DPO only fixes the log-ratio
        margin, so it can lower the chosen response's likelihood as well; this term holds it up.
        Each response's NLL is averaged over its own tokens, then over pairs (TRL averages over
        all chosen tokens of the batch: the same when responses have equal lengths).
        0 (default) is plain DPO.
    average_logps: False (default) sums log-probs over response tokens; True averages them
        per token. SimPO always averages.
    disable_dropout: train with dropout off (as TRL does by default), so the policy's
        log-probs at step 0 equal the reference's.
    """

    loss_type: str = "sigmoid"
    beta: float = 0.1
    tau: float | None = None
    eps: float = 0.1
    alpha: float = 0.0
    gamma: float = 0.5
    sft_weight: float = 0.0
    average_logps: bool = False
    lr: float = 5e-4
    batch_size: int = 32
    epochs: int = 1
    max_steps: int | None = None
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    seed: int = 0
    disable_dropout: bool = True
    # speed switches
    concat_forward: bool = True
    cache_reference: bool = True
    trim_padding: bool = True
    pack_sequences: bool = False
    ref_batch_size: int = 128

    def __post_init__(self):
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
        for name in ("batch_size", "epochs", "ref_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")

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


# ----------------------------------------------------------------------------- records
def _check_records(records: Sequence[dict], what: str = "records") -> None:
    if len(records) == 0:
        raise ValueError(f"{what} is empty: train_dpo needs at least one prompt/chosen/rejected record "
                         f"(preflab.world.preference_pairs makes them)")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{what}[{i}] is a {type(rec).__name__}, not a dict with keys prompt, chosen, "
                             f"rejected (TRL's format; preflab.world.preference_pairs makes them)")
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise ValueError(f"{what}[{i}] has no {key!r} key: each record needs prompt, chosen and "
                                 f"rejected (TRL's format; preflab.world.preference_pairs makes them)")
            if not isinstance(rec[key], str):
                raise ValueError(f"{what}[{i}][{key!r}] must be a string, got {type(rec[key]).__name__}")
        for key in ("chosen", "rejected"):
            if not rec[key].strip():
                raise ValueError(f"{what}[{i}] has an empty {key!r} response: every response needs at least "
                                 f"one token. Drop such records (preflab.dpo.drop_empty(records)) or fill in the response.")


@dataclass
class EncodedPairs:
    """All chosen and all rejected responses, encoded once (right-padded to the data set's longest)."""

    chosen: Batch
    rejected: Batch
    chosen_len: torch.Tensor    # response tokens per example, EOS included
    rejected_len: torch.Tensor

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(tokenizer, records: Sequence[dict]) -> EncodedPairs:
    """Tokenize every record once (prompt masked out, EOS in the response)."""
    _check_records(records)
    prompts = [r["prompt"] for r in records]
    chosen = encode(tokenizer, prompts, [r["chosen"] for r in records])
    rejected = encode(tokenizer, prompts, [r["rejected"] for r in records])
    return EncodedPairs(chosen, rejected, chosen.response_mask.sum(-1), rejected.response_mask.sum(-1))


def _pad_to(b: Batch, T: int, pad_id: int) -> Batch:
    """Right-pad (or cut padding) to exactly T columns."""
    cur = b.input_ids.shape[1]
    if cur >= T:
        return Batch(b.input_ids[:, :T], b.attention_mask[:, :T], b.response_mask[:, :T])
    extra = T - cur
    n = b.input_ids.shape[0]
    return Batch(torch.cat([b.input_ids, b.input_ids.new_full((n, extra), pad_id)], 1),
                 torch.cat([b.attention_mask, b.attention_mask.new_zeros((n, extra))], 1),
                 torch.cat([b.response_mask, b.response_mask.new_zeros((n, extra))], 1))


def _rows(b: Batch, idx) -> Batch:
    return Batch(b.input_ids[idx], b.attention_mask[idx], b.response_mask[idx])


def _seq_logps(model, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and response token counts, shape (B,) each."""
    logp = token_logprobs(model, b.input_ids, b.attention_mask, b.response_mask)
    return logp.sum(-1), b.response_mask[:, 1:].sum(-1).to(logp.dtype)


def pack_rows(lengths: Sequence[int], context: int) -> list[list[int]]:
    """First-fit packing: the indices of the sequences that share each row of at most ``context`` tokens."""
    rows: list[list[int]] = []
    used: list[int] = []
    for k, n in enumerate(lengths):
        j = next((j for j in range(len(rows)) if used[j] + n <= context), None)
        if j is None:
            rows.append([k])
            used.append(n)
        else:
            rows[j].append(k)
            used[j] += n
    return rows


def packed_pair_logps(model, enc: EncodedPairs, idx) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs with every sequence of the batch packed end to end.

    The batch's chosen and rejected sequences (real tokens only) are placed first-fit into rows
    of at most the model's context. A block-diagonal causal mask keeps each sequence from seeing
    its neighbours and positions restart at 0 for each, so every sequence's log-probs equal its
    unpacked ones (up to float rounding); no compute goes to padding, and the LM head runs only
    at the positions that predict response tokens. Needs a model that accepts a 4-D boolean
    attention mask (transformers >= 5 GPT-2; tested).
    """
    device = next(model.parameters()).device
    seqs = []
    for b in (enc.chosen, enc.rejected):
        for i in idx.tolist():
            n = int(b.attention_mask[i].sum())
            seqs.append((b.input_ids[i, :n], b.response_mask[i, :n]))
    rows = pack_rows([len(ids_k) for ids_k, _ in seqs], max_context(model))
    R, L = len(rows), max(sum(len(seqs[k][0]) for k in items) for items in rows)
    ids = torch.zeros((R, L), dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    seg = torch.full((R, L), -1, dtype=torch.long)  # which sequence owns each slot (-1: empty)
    resp = torch.zeros((R, L), dtype=torch.long)
    for j, items in enumerate(rows):
        o = 0
        for k in items:
            ids_k, resp_k = seqs[k]
            n = len(ids_k)
            ids[j, o:o + n], pos[j, o:o + n], seg[j, o:o + n], resp[j, o:o + n] = ids_k, torch.arange(n), k, resp_k
            o += n
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    mask = (causal & (seg[:, :, None] == seg[:, None, :]))[:, None] | torch.eye(L, dtype=torch.bool)
    ids, pos, seg, resp, mask = ids.to(device), pos.to(device), seg.to(device), resp.to(device), mask.to(device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    target = resp[:, 1:].bool()  # position t predicts token t+1; both in the same sequence
    logits = model.get_output_embeddings()(hidden[:, :-1][target]).float()
    picked = F.log_softmax(logits, -1).gather(1, ids[:, 1:][target].unsqueeze(1)).squeeze(1)
    s = torch.zeros(len(seqs), dtype=picked.dtype, device=device).index_add(0, seg[:, 1:][target], picked)
    return s[: len(idx)], s[len(idx):]


def pair_logps(model, enc: EncodedPairs, idx, pad_id: int, concat_forward: bool = True,
               trim: bool = True, pack: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected responses of rows ``idx``: (chosen, rejected).

    concat_forward: one forward pass on [chosen; rejected] (both padded to a common width);
    otherwise two. trim: cut to the batch's longest row; otherwise pad to the data set's longest.
    pack: no padding at all (:func:`packed_pair_logps`); overrides the other two.
    """
    if pack:
        return packed_pair_logps(model, enc, idx)
    device = next(model.parameters()).device
    c, r = _rows(enc.chosen, idx), _rows(enc.rejected, idx)
    if trim:
        T = int(max(c.attention_mask.sum(-1).max(), r.attention_mask.sum(-1).max()))
    else:
        T = max(enc.chosen.input_ids.shape[1], enc.rejected.input_ids.shape[1])
    c, r = _pad_to(c, T, pad_id), _pad_to(r, T, pad_id)
    if concat_forward:
        both = Batch(torch.cat([c.input_ids, r.input_ids]), torch.cat([c.attention_mask, r.attention_mask]),
                     torch.cat([c.response_mask, r.response_mask])).to(device)
        s, _ = _seq_logps(model, both)
        n = c.input_ids.shape[0]
        return s[:n], s[n:]
    sc, _ = _seq_logps(model, c.to(device))
    sr, _ = _seq_logps(model, r.to(device))
    return sc, sr


@torch.no_grad()
def _all_pair_logps(model, enc: EncodedPairs, pad_id: int, batch_size: int, progress: bool = False,
                    desc: str = "reference log-probs", pack: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    out_c, out_r = [], []
    n = len(enc)
    for s in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        idx = torch.arange(s, min(n, s + batch_size))
        c, r = pair_logps(model, enc, idx, pad_id, concat_forward=True, trim=True, pack=pack)
        out_c.append(c.float().cpu())
        out_r.append(r.float().cpu())
    model.train(was_training)
    return torch.cat(out_c), torch.cat(out_r)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def precompute_reference_logps(reference, tokenizer, records: Sequence[dict], batch_size: int = 128,
                               progress: bool = False) -> dict:
    """The reference's summed log-probs of every chosen and rejected response, computed once.

    Returns {"chosen": (N,), "rejected": (N,), "chosen_len": (N,), "rejected_len": (N,)}, the
    lengths in response tokens (EOS included), so averaged log-probs are chosen / chosen_len.
    """
    enc = encode_pairs(tokenizer, records)
    c, r = _all_pair_logps(reference, enc, _pad_id(tokenizer), batch_size, progress)
    return {"chosen": c, "rejected": r, "chosen_len": enc.chosen_len.float(), "rejected_len": enc.rejected_len.float()}


@torch.no_grad()
def implicit_reward(policy, reference, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                    beta: float, batch_size: int = 128, average: bool = False) -> np.ndarray:
    """DPO's implicit reward  beta * (log pi(y|x) - log pi_ref(y|x))  per (prompt, response).

    Summed log-probs by default (``average=True``: per-token averages). It equals the reward
    of the RLHF problem that ``policy`` solves exactly, up to the per-prompt constant
    beta * log Z(x), so compare it only between responses to the same prompt.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    out = []
    pad = _pad_id(tokenizer)
    dev = next(policy.parameters()).device
    for s in range(0, len(prompts), batch_size):
        b = encode(tokenizer, prompts[s: s + batch_size], responses[s: s + batch_size])
        T = int(b.attention_mask.sum(-1).max())
        b = _pad_to(b, T, pad).to(dev)
        lp, n = _seq_logps(policy, b)
        lr, _ = _seq_logps(reference, b.to(next(reference.parameters()).device))
        d = lp - lr.to(lp.device)
        out.append((beta * (d / n if average else d)).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def sample_policy_pairs(policy, tokenizer, world, prompts: Sequence[str], labeler=None, seed: int = 0,
                        decoding=None, batch_size: int = 64) -> list[dict]:
    """On-policy preference pairs, as in the DPO paper's controlled-sentiment (IMDb) experiment: two
    samples per prompt from ``policy`` (usually the SFT model), labelled by a simulated ``labeler``
    (default: the world's).

    Returns records in the prompt/chosen/rejected format with the same provenance fields as
    ``World.preference_pairs``. Pairs with an empty side or two identical sides are dropped
    (they carry no preference), so fewer than ``len(prompts)`` records may come back.
    """
    from preflab.model import DecodingConfig, generate, model_version
    from preflab.world import RUBRIC, Labeler

    decoding = decoding or DecodingConfig()
    labeler = labeler or world.labeler
    rng = np.random.default_rng(seed)
    prompts = list(prompts)
    a = generate(policy, tokenizer, prompts, decoding, seed=seed, batch_size=batch_size)
    b = generate(policy, tokenizer, prompts, decoding, seed=seed + 7919, batch_size=batch_size)
    version = model_version(policy)
    records = []
    for prompt, x, y in zip(prompts, a, b):
        if not x.strip() or not y.strip() or x == y:
            continue
        if isinstance(labeler, Labeler):
            p_x = labeler.prob_first(world, prompt, x, y)
            x_wins = bool(rng.random() < p_x)
        else:
            p_x = labeler.prob_first(world, prompt, x, y)
            x_wins = bool(labeler.label(world, prompt, x, y, rng))
        chosen, rejected = (x, y) if x_wins else (y, x)
        records.append({
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "chosen_shown_first": x_wins, "p_label": p_x if x_wins else 1.0 - p_x,
            "gold_chosen": world.gold_reward(prompt, chosen), "gold_rejected": world.gold_reward(prompt, rejected),
            "labeler": getattr(labeler, "name", "pool"), "policy_version": version,
            "rubric_version": RUBRIC["version"], "data_version": world.version_hash,
        })
    return records


# ----------------------------------------------------------------------------- the loss
def dpo_losses(config: DPOConfig, pc, pr, rc, rr, chosen_len, rejected_len):
    """Per-example losses and implicit rewards for ``config.loss_type``, from SUMMED log-probs.

    Averages (log-prob / response tokens) are taken here when the loss uses them. Returns
    (losses, chosen_rewards, rejected_rewards, h) with h the log-ratio margin the loss saw.
    """
    nll_chosen = -pc / chosen_len        # per-token NLL of the chosen response (for sft_weight)
    if config.uses_average:
        pc, pr = pc / chosen_len, pr / rejected_len
        if rc is not None:
            rc, rr = rc / chosen_len, rr / rejected_len
    lt, beta = config.loss_type, config.beta
    # h: the margin the loss saw (SimPO has no reference: its margin is of the policy alone)
    h = (pc - pr).detach() if lt == "simpo" else ((pc - rc) - (pr - rr)).detach()
    if lt == "simpo":
        out = simpo_loss(pc, pr, beta, config.gamma)
    elif lt == "sigmoid":
        out = dpo_loss(pc, pr, rc, rr, beta)
    elif lt == "ipo":
        out = ipo_loss(pc, pr, rc, rr, config.ipo_tau)
    elif lt == "cdpo":
        out = cdpo_loss(pc, pr, rc, rr, beta, config.eps)
    elif lt == "robust":
        out = robust_dpo_loss(pc, pr, rc, rr, beta, config.eps)
    elif lt == "hinge":
        out = hinge_loss(pc, pr, rc, rr, beta)
    elif lt == "rdpo":
        out = rdpo_loss(pc, pr, rc, rr, beta, config.alpha, chosen_len, rejected_len)
    else:  # pragma: no cover (DPOConfig validates loss_type)
        raise ValueError(lt)
    losses, cr, rj = out
    if config.sft_weight:
        losses = losses + config.sft_weight * nll_chosen
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
    """
    enc = encode_pairs(tokenizer, records)
    pad = _pad_id(tokenizer)
    pc, pr = _all_pair_logps(policy, enc, pad, batch_size)
    rc = rr = None
    if config.needs_reference:
        if ref_logps is None:
            if reference is None:
                raise ValueError(f"loss_type {config.loss_type!r} needs reference log-probs: pass reference= "
                                 f"or ref_logps= (from precompute_reference_logps)")
            ref_logps = precompute_reference_logps(reference, tokenizer, records, batch_size)
        rc, rr = ref_logps["chosen"], ref_logps["rejected"]
    cl, rl = enc.chosen_len.float(), enc.rejected_len.float()
    losses, cr, rj, h = dpo_losses(config, pc, pr, rc, rr, cl, rl)
    return _metrics(losses, cr, rj, h, pc, pr)


# ----------------------------------------------------------------------------- training
def train_dpo(policy, reference, tokenizer, records: Sequence[dict], config: DPOConfig = DPOConfig(),
              eval_records: Sequence[dict] | None = None, eval_every: int | None = None,
              callback: Callable[[int, dict], bool | None] | None = None, progress: bool = True) -> list[dict]:
    """Train ``policy`` in place on preference ``records``; return the history, one dict per step.

    Each dict holds TRL's metric names, measured on that step's batch before its update:
    ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
    ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (summed log-probs), plus
    ``logratio_margin`` (mean h), ``step``, ``epoch``, ``lr``, ``grad_norm``. With
    ``eval_records``, every ``eval_every`` steps (default: once per epoch) and after the last
    step, the same metrics on the held-out pairs are added with an ``eval_`` prefix (the
    policy as it is after that step's update).

    ``reference`` is the frozen model the log-ratios are taken against (usually the SFT
    policy before training; it may be None for SimPO). ``callback(step, metrics)`` is called
    after each step; if it returns True, training stops (early stopping).
    """
    cfg = config
    _check_records(records)
    if eval_records is not None:
        _check_records(eval_records, "eval_records")
    if cfg.needs_reference and reference is None:
        raise ValueError(f"loss_type {cfg.loss_type!r} needs a reference model (the frozen SFT policy); "
                         f"only 'simpo' trains without one")
    if reference is not None and reference is policy:
        raise ValueError("reference is the policy itself: pass a frozen copy (copy.deepcopy(policy)) "
                         "or load it again with preflab.model.load_policy()")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    pad = _pad_id(tokenizer)
    enc = encode_pairs(tokenizer, records)
    n = len(enc)
    cl_all, rl_all = enc.chosen_len.float(), enc.rejected_len.float()
    if reference is not None:
        reference.eval()  # frozen: only ever run under torch.no_grad()
    if not any(p.requires_grad for p in policy.parameters()):
        raise ValueError("the policy has no trainable parameters (requires_grad is False everywhere): "
                         "was it frozen as someone's reference? Train a fresh copy.deepcopy of the SFT model")

    ref_c = ref_r = None
    if cfg.needs_reference and cfg.cache_reference:
        ref_c, ref_r = _all_pair_logps(reference, enc, pad, cfg.ref_batch_size, progress, "reference log-probs",
                                       pack=cfg.pack_sequences)
    eval_ref = None
    if eval_records is not None and cfg.needs_reference:
        eval_ref = precompute_reference_logps(reference, tokenizer, eval_records, cfg.ref_batch_size)

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    # max_steps, when given, overrides epochs (as in TRL): the data is cycled as needed
    total = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs
    eval_every = eval_every or steps_per_epoch

    device = next(policy.parameters()).device
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    history: list[dict] = []
    policy.train(not cfg.disable_dropout)
    order = np.array([], dtype=np.int64)
    bar = tqdm(total=total, desc=f"dpo ({cfg.loss_type})", disable=not progress, mininterval=1)
    t0 = time.perf_counter()
    for step in range(total):
        epoch_pos = step % steps_per_epoch
        if epoch_pos == 0:
            order = rng.permutation(n)
        idx = torch.as_tensor(order[epoch_pos * cfg.batch_size: (epoch_pos + 1) * cfg.batch_size])
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr

        pc, pr = pair_logps(policy, enc, idx, pad, cfg.concat_forward, cfg.trim_padding, cfg.pack_sequences)
        rc = rr = None
        if cfg.needs_reference:
            if cfg.cache_reference:
                rc, rr = ref_c[idx].to(device), ref_r[idx].to(device)
            else:
                with torch.no_grad():
                    rc, rr = pair_logps(reference, enc, idx, pad, cfg.concat_forward, cfg.trim_padding,
                                        cfg.pack_sequences)
        cl, rl = cl_all[idx].to(device), rl_all[idx].to(device)
        losses, cr, rj, h = dpo_losses(cfg, pc, pr, rc, rr, cl, rl)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm).item()
        else:
            gn = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in policy.parameters()
                                      if p.grad is not None)))
        opt.step()

        m = _metrics(losses, cr, rj, h, pc, pr)
        m.update(step=step, epoch=step / steps_per_epoch, lr=lr, grad_norm=gn,
                 elapsed_s=time.perf_counter() - t0)
        if eval_records is not None and ((step + 1) % eval_every == 0 or step == total - 1):
            ev = evaluate_pairs(policy, tokenizer, eval_records, cfg, ref_logps=eval_ref,
                                batch_size=cfg.ref_batch_size)
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
    """The config as a plain dict (for run manifests)."""
    return asdict(config)
