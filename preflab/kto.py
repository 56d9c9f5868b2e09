"""KTO: preference optimization from unpaired thumbs-up / thumbs-down labels (Lesson 17).

DPO needs pairs: two responses to one prompt and a label saying which is better. KTO
(Ethayarajh et al. 2024, "Kahneman-Tversky Optimization") needs only one response at a time
and a binary label, desirable (thumbs up) or undesirable (thumbs down). With the implied reward
r(x, y) = log pi(y|x) - log pi_ref(y|x) (SUMMED log-probs over response tokens, EOS included)
and a reference point z0, the loss of one example is

    desirable:    L = lambda_D * (1 - sigmoid(beta * (r(x, y) - z0)))
    undesirable:  L = lambda_U * (1 - sigmoid(beta * (z0 - r(x, y))))

z0 estimates KL(pi || pi_ref): the mean log-ratio of the policy on *mismatched* prompt/response
pairs (each prompt with another example's response), clamped at 0 and detached, so no gradient
flows through it (as in the paper and TRL). A desirable response gains only by rising above what
the policy already gives every response; an undesirable one only by falling below it. beta is
the KL coefficient as in DPO: a higher beta keeps the policy closer to the reference.
lambda_D and lambda_U weigh the two classes; the paper suggests
lambda_D * n_D / (lambda_U * n_U) in [1, 4/3] when the classes are unbalanced.

The labels come from the same simulated labelers as DPO's pairs, asked about one response at a
time (:func:`thumbs_up_prob`): P(up) = sigmoid((g(x, y) - threshold) / temperature), flipped with
the labeler's ``flip_prob``: the labeler approves a response when its gold reward clears a bar.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from preflab.losses import _as_float_tensor, _check_scalar, _same_shape
from preflab.model import Batch, encode, token_logprobs
import preflab.world as world_module  # RUBRIC is read at call time: Rubric.active() swaps it
from preflab.world import Labeler, as_rng, sigmoid

__all__ = ["kto_loss", "kto_reference_point", "thumbs_up_prob", "thumbs_records", "KTOConfig", "KTOSpeed",
           "train_kto", "evaluate_kto", "config_dict"]


# ----------------------------------------------------------------------------- the loss
def kto_reference_point(mismatched_policy_logps, mismatched_ref_logps):
    """KTO's reference point z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))), detached (Lesson 17).

    (x, y') are mismatched pairs: each prompt with a response written for another prompt, so the
    mean log-ratio estimates KL(pi || pi_ref) without favouring the labelled responses.
    """
    named = {"mismatched_policy_logps": _as_float_tensor(mismatched_policy_logps, "mismatched_policy_logps"),
             "mismatched_ref_logps": _as_float_tensor(mismatched_ref_logps, "mismatched_ref_logps")}
    _same_shape(named)
    p, r = named.values()
    if p.numel() == 0:
        raise ValueError("kto_reference_point needs at least one mismatched pair")
    return (p - r).mean().clamp(min=0).detach()


def kto_loss(policy_logps, ref_logps, desirable, reference_point, beta, desirable_weight=1.0,
             undesirable_weight=1.0):
    """KTO's loss, per example (Lesson 17; Ethayarajh et al. 2024, eq. 7-8).

        r    = policy_logps - ref_logps                     (summed log-probs)
        L_D  = lambda_D * (1 - sigmoid(beta * (r - z0)))    for desirable examples
        L_U  = lambda_U * (1 - sigmoid(beta * (z0 - r)))    for undesirable examples

    1 - sigmoid(u) is computed as exp(logsigmoid(-u)): finite and without NaN at any margin.
    ``desirable`` is a bool tensor or array (True: thumbs up); ``reference_point`` z0 a number
    or a 0-d tensor (detached here). beta > 0 is the KL coefficient (higher: closer to the
    reference). Returns (losses, rewards) with rewards = beta * r, detached (TRL's
    ``rewards/chosen`` and ``rewards/rejected`` are their means over each class).
    """
    beta = _check_scalar(beta, "beta", positive=True)
    wd = _check_scalar(desirable_weight, "desirable_weight", nonneg=True)
    wu = _check_scalar(undesirable_weight, "undesirable_weight", nonneg=True)
    named = {"policy_logps": _as_float_tensor(policy_logps, "policy_logps"),
             "ref_logps": _as_float_tensor(ref_logps, "ref_logps")}
    _same_shape(named)
    pl, rl = named.values()
    d = torch.as_tensor(np.asarray(desirable) if not isinstance(desirable, torch.Tensor) else desirable)
    if d.dtype != torch.bool:
        if d.is_floating_point() or not bool(((d == 0) | (d == 1)).all()):
            raise ValueError("desirable must be booleans (True: thumbs up, False: thumbs down) or 0/1 integers")
        d = d.bool()
    if tuple(d.shape) != tuple(pl.shape):
        raise ValueError(f"desirable has shape {tuple(d.shape)} but the log-probs have {tuple(pl.shape)}")
    z0 = reference_point.detach() if isinstance(reference_point, torch.Tensor) else torch.tensor(
        _check_scalar(reference_point, "reference_point"))
    if z0.numel() != 1 or not bool(torch.isfinite(z0).all()):
        raise ValueError(f"reference_point must be one finite number, got {reference_point!r}")
    z0 = z0.to(pl.dtype).reshape(())
    r = pl - rl
    u = torch.where(d, beta * (r - z0), beta * (z0 - r))
    losses = torch.where(d, torch.full_like(r, wd), torch.full_like(r, wu)) * torch.exp(F.logsigmoid(-u))
    return losses, beta * r.detach()


# ----------------------------------------------------------------------------- the labels
def thumbs_up_prob(world, labeler, prompt: str, response: str, threshold: float = 0.5) -> float:
    """P(the labeler gives ``response`` a thumbs up) (Lesson 17).

        z = (g(x, y) - threshold) / temperature,   P(up) = (1 - flip) * sigmoid(z) + flip * (1 - sigmoid(z))

    with g the gold reward and ``temperature`` / ``flip_prob`` the labeler's own (the same
    :class:`preflab.world.Labeler` that labels DPO's pairs, asked about one response at a time;
    its length and position biases need a second response and do not apply).
    """
    if not isinstance(labeler, Labeler):
        raise ValueError(f"thumbs labels need a preflab.world.Labeler (a temperature and a flip rate), "
                         f"got {type(labeler).__name__}")
    z = (world.gold_reward(prompt, response) - float(threshold)) / labeler.temperature
    s = sigmoid(z)
    return (1.0 - labeler.flip_prob) * s + labeler.flip_prob * (1.0 - s)


def thumbs_records(world, prompts: Sequence[str], responses: Sequence[str], labeler=None, threshold: float = 0.5,
                   rng: np.random.Generator | int | None = 0, policy_version: str = "") -> list[dict]:
    """One thumbs-up/down label per (prompt, response), in TRL's unpaired format (Lesson 17).

    Each record: ``prompt``, ``completion``, ``label`` (True: thumbs up), plus provenance
    (``p_label`` the labeler's P(up), ``gold``, ``labeler``, ``threshold``, ``policy_version``,
    ``rubric_version``, ``data_version``). Empty responses are skipped (nothing to judge).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    labeler = labeler or world.labeler
    rng = as_rng(rng)
    out = []
    for p, y in zip(prompts, responses):
        if not y.strip():
            continue
        q = thumbs_up_prob(world, labeler, p, y, threshold)
        out.append({"prompt": p, "completion": y, "label": bool(rng.random() < q), "p_label": q,
                    "gold": world.gold_reward(p, y), "labeler": labeler.name, "threshold": float(threshold),
                    "policy_version": policy_version, "rubric_version": world_module.RUBRIC["version"],
                    "data_version": world.version_hash})
    return out


# ----------------------------------------------------------------------------- the trainer
@dataclass
class KTOSpeed:
    """Switches that change speed, never the result (up to float rounding) (Lesson 17)."""

    cache_reference: bool = True
    """compute the reference's log-probs of every (matched and mismatched) example once, up front"""
    ref_batch_size: int = 128
    """rows per forward pass when caching reference log-probs"""


@dataclass
class KTOConfig:
    """Every setting of one KTO run (Lesson 17; recorded in run manifests via :func:`config_dict`)."""

    beta: float = 0.1
    """KL coefficient: higher keeps the policy closer to the reference"""
    desirable_weight: float = 1.0
    """lambda_D, the weight of thumbs-up examples"""
    undesirable_weight: float = 1.0
    """lambda_U, the weight of thumbs-down examples"""
    lr: float = 3e-4
    """peak learning rate (AdamW)"""
    batch_size: int = 32
    """examples per step; the reference point z0 is estimated on the same batch's mismatched pairs"""
    max_steps: int = 24
    """optimizer steps (the data is reshuffled each time it runs out)"""
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
    speed: KTOSpeed = field(default_factory=KTOSpeed)
    """speed switches (see KTOSpeed)"""

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"KTOConfig.beta must be > 0 (the KL coefficient), got {self.beta}")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError("KTOConfig.desirable_weight and undesirable_weight must be >= 0")
        if not self.lr > 0 or not self.max_grad_norm > 0:
            raise ValueError("KTOConfig.lr and max_grad_norm must be > 0")
        if self.batch_size < 2:
            raise ValueError(f"KTOConfig.batch_size must be >= 2 (z0 needs another example's response), "
                             f"got {self.batch_size}")
        if self.max_steps < 1 or self.warmup_steps < 0:
            raise ValueError("KTOConfig.max_steps must be >= 1 and warmup_steps >= 0")


def config_dict(cfg: KTOConfig) -> dict:
    """The config as a plain (nested) dict, for run manifests (Lesson 17)."""
    return asdict(cfg)


def _check_unpaired(records: Sequence[dict]) -> None:
    if len(records) < 2:
        raise ValueError("KTO needs at least two records (prompt, completion, label): the reference point "
                         "uses another example's completion")
    for i, rec in enumerate(records):
        for key in ("prompt", "completion", "label"):
            if key not in rec:
                raise ValueError(f"records[{i}] has no {key!r} key: KTO records are TRL's unpaired format "
                                 f"(prompt, completion, label); preflab.kto.thumbs_records makes them")
        if not isinstance(rec["completion"], str) or not rec["completion"].strip():
            raise ValueError(f"records[{i}] has an empty completion")
        if not isinstance(rec["label"], (bool, np.bool_)):
            raise ValueError(f"records[{i}]['label'] must be True (thumbs up) or False, got {rec['label']!r}")


def _seq_logps(model, b: Batch, rows=None) -> torch.Tensor:
    """Summed response log-probs of the rows of ``b`` (trimmed to their longest row)."""
    if rows is not None:
        b = Batch(b.input_ids[rows], b.attention_mask[rows], b.response_mask[rows])
    T = int(b.attention_mask.sum(-1).max())
    dev = next(model.parameters()).device
    return token_logprobs(model, b.input_ids[:, :T].to(dev), b.attention_mask[:, :T].to(dev),
                          b.response_mask[:, :T].to(dev)).sum(-1)


@torch.no_grad()
def _all_logps(model, b: Batch, batch_size: int) -> torch.Tensor:
    was = model.training
    model.eval()
    out = [_seq_logps(model, b, torch.arange(s, min(len(b), s + batch_size))).float().cpu()
           for s in range(0, len(b), batch_size)]
    model.train(was)
    return torch.cat(out)


def _encode_unpaired(tokenizer, records):
    prompts = [r["prompt"] for r in records]
    matched = encode(tokenizer, prompts, [r["completion"] for r in records])
    # mismatched: each prompt with the previous record's completion (TRL shifts by one the same way)
    shifted = [records[i - 1]["completion"] for i in range(len(records))]
    mismatched = encode(tokenizer, prompts, shifted)
    return matched, mismatched


@torch.no_grad()
def evaluate_kto(policy, reference, tokenizer, records: Sequence[dict], cfg: KTOConfig) -> dict:
    """KTO's metrics on held-out unpaired records, without gradients (Lesson 17).

    ``rewards/accuracy``: share of records whose implicit reward beta * r sits on the side of z0
    the label asks for (above for thumbs up, below for thumbs down).
    """
    _check_unpaired(records)
    matched, mismatched = _encode_unpaired(tokenizer, records)
    bs = cfg.speed.ref_batch_size
    pl, rl = _all_logps(policy, matched, bs), _all_logps(reference, matched, bs)
    z0 = kto_reference_point(_all_logps(policy, mismatched, bs), _all_logps(reference, mismatched, bs))
    d = torch.tensor([bool(r["label"]) for r in records])
    losses, rewards = kto_loss(pl, rl, d, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    side = torch.where(d, rewards > cfg.beta * z0, rewards < cfg.beta * z0)
    return {"loss": losses.mean().item(), "kl": float(z0), "rewards/accuracy": side.float().mean().item()}


def train_kto(policy, reference, tokenizer, records: Sequence[dict], cfg: KTOConfig = KTOConfig(),
              callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``policy`` in place with KTO on unpaired ``records`` (Lesson 17).

    records: TRL's unpaired format, dicts with ``prompt``, ``completion`` and ``label`` (True =
    thumbs up), e.g. from :func:`thumbs_records`. reference: the frozen SFT model.
    callback(step, metrics) after each step; returning True stops training.

    Returns one dict per step (measured on that step's batch, before its update): ``loss``,
    ``kl`` (the reference point z0, nats), ``rewards/chosen`` and ``rewards/rejected`` (mean
    beta * r over the batch's thumbs-up / thumbs-down examples; NaN if the batch has none),
    ``logps`` (mean summed log-prob), ``n_desirable``, ``step``, ``lr``, ``grad_norm``.
    """
    _check_unpaired(records)
    if reference is None or reference is policy:
        raise ValueError("KTO needs a frozen reference model separate from the policy "
                         "(preflab.ppo.frozen_copy(sft))")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters (was it frozen as a reference?)")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(policy.parameters()).device
    reference.eval()
    matched, mismatched = _encode_unpaired(tokenizer, records)
    labels = torch.tensor([bool(r["label"]) for r in records])
    n = len(records)
    ref_m = ref_mm = None
    if cfg.speed.cache_reference:
        ref_m = _all_logps(reference, matched, cfg.speed.ref_batch_size)
        ref_mm = _all_logps(reference, mismatched, cfg.speed.ref_batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    order, pos = rng.permutation(n), 0
    policy.eval()  # dropout off: at step 0 the policy's log-probs equal the reference's
    for step in tqdm(range(cfg.max_steps), desc="kto", disable=not cfg.progress, mininterval=1):
        t0 = time.perf_counter()
        # ---- learning-rate schedule (linear warm-up, then constant)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + cfg.batch_size > n and pos > 0:
            order, pos = rng.permutation(n), 0
        idx = torch.as_tensor(order[pos: pos + cfg.batch_size])
        pos += cfg.batch_size
        # ---- forward: summed log-probs of the labelled responses (with grad) and z0 (without)
        pl = _seq_logps(policy, matched, idx)
        with torch.no_grad():
            if cfg.speed.cache_reference:
                rl, rl_mm = ref_m[idx].to(device), ref_mm[idx].to(device)
            else:
                rl, rl_mm = _seq_logps(reference, matched, idx), _seq_logps(reference, mismatched, idx)
            z0 = kto_reference_point(_seq_logps(policy, mismatched, idx), rl_mm)
        d = labels[idx].to(device)
        # ---- loss: lambda_D (1 - sigmoid(beta (r - z0))) for thumbs up, lambda_U (1 - sigmoid(beta (z0 - r))) for down
        losses, rewards = kto_loss(pl, rl, d, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        loss = losses.mean()
        # ---- backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        # ---- log one dict per step
        m = {"step": step, "loss": loss.item(), "kl": float(z0), "lr": lr, "grad_norm": float(gn),
             "rewards/chosen": rewards[d].mean().item() if bool(d.any()) else float("nan"),
             "rewards/rejected": rewards[~d].mean().item() if bool((~d).any()) else float("nan"),
             "logps": pl.detach().mean().item(), "n_desirable": int(d.sum()),
             "seconds": time.perf_counter() - t0}
        history.append(m)
        if callback is not None and callback(step, m):
            break
    policy.eval()
    return history
