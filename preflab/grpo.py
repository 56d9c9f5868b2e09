"""GRPO: policy gradients with group-relative advantages and no value model (Lesson 15).

DeepSeekMath (Shao et al. 2024) replaced PPO's learned value baseline with a cheaper one: sample
a *group* of G responses o_1..o_G to the same prompt q, score each with a reward r_i (here a
verifier: 1 if the arithmetic answer is right, else 0), and use the group's own statistics as the
baseline:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)          (every token of o_i gets A_i)

std is the sample standard deviation (Bessel-corrected, as TRL computes it) and eps = 1e-4. A
group whose G rewards are all equal has A_i = 0 for every member: it carries no gradient at all
(TRL logs the share of such groups as ``frac_reward_zero_std``).

The policy maximizes PPO's clipped surrogate on those advantages, with an optional KL penalty to
the reference policy pi_ref (the SFT model) written as the k3 estimator at each token:

    rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t})
    l_{i,t}   = -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps_clip, 1 + eps_clip) A_i) + beta * k3_{i,t}
    k3_{i,t}  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1     (per token, >= 0)

A higher beta keeps the policy closer to the reference; beta = 0 needs no reference at all.
How the per-token terms l_{i,t} are summed into one loss is where the variants differ:

    "grpo"     L = (1/G) sum_i (1/|o_i|) sum_t l_{i,t}       (DeepSeekMath: each response's MEAN)
    "dr_grpo"  L = (1/(G * L_max)) sum_i sum_t l_{i,t}       (Liu et al. 2025: one constant normalizer)
    "bnpo"     L = (sum_i sum_t l_{i,t}) / (sum_i |o_i|)     (token mean over the batch, as DAPO)

Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training") points at two biases of the
original: the 1/|o_i| factor gives each token of a short response more weight than each token of a
long one, so a wrong answer (A < 0) is punished less per token the longer it runs and a right one
(A > 0) is rewarded more the shorter it is; and dividing by the group's std up-weights prompts the
policy already finds very easy or very hard (small std). Its fix is ``loss_type="dr_grpo"`` with
``scale_rewards="none"``: advantages r_i - mean(r), and a normalizer that does not depend on o_i.

Log-probs are per token here (the objective is a sum or mean over tokens, never of a sequence's
summed log-prob); EOS is a response token, the prompt is not.

The two pieces an exercise can be built on, :func:`group_advantages` and :func:`grpo_loss`, are
plain functions: the first takes numpy arrays, torch tensors or lists and returns the same kind;
the second takes torch tensors (or arrays, converted) and returns a torch scalar.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from preflab.model import Batch, DecodingConfig, generate, token_logprobs
from preflab.world import PROMPT_TEMPLATE, parse_response

__all__ = ["GRPOConfig", "GRPOSpeed", "LOSS_TYPES", "SCALE_REWARDS", "group_advantages", "zero_std_groups",
           "grpo_loss", "rollouts", "train_grpo", "config_dict", "answer_first", "verifier_reward", "format_reward"]

LOSS_TYPES = ("grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")


# ----------------------------------------------------------------------------- advantages
def _as_groups(rewards, group_size: int):
    """(rewards as a float64 array of shape (n_groups, G), the input's kind)."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer (G, samples per prompt), got {group_size!r}")
    kind = "torch" if isinstance(rewards, torch.Tensor) else "numpy"
    r = rewards.detach().cpu().double().numpy() if kind == "torch" else np.asarray(rewards, dtype=float)
    if r.ndim == 2:
        if r.shape[1] != group_size:
            raise ValueError(f"rewards of shape {r.shape} have groups of {r.shape[1]}, but group_size is {group_size}")
    elif r.ndim == 1:
        if r.size % group_size:
            raise ValueError(f"{r.size} rewards do not split into groups of {group_size}: pass G samples per "
                             f"prompt, each prompt's samples next to each other")
        r = r.reshape(-1, group_size)
    else:
        raise ValueError(f"rewards must be 1-D (n_groups * G,) or 2-D (n_groups, G), got shape {r.shape}")
    if r.size == 0:
        raise ValueError("rewards is empty: need at least one group")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite (no NaN or inf)")
    return r, kind


def group_advantages(rewards, group_size: int, scale_rewards: str = "group", eps: float = 1e-4):
    """Group-relative advantages (Lesson 15), one per response.

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     scale_rewards="group" (DeepSeekMath's GRPO)
        A_i = (r_i - mean_g(r)) / (std(all r) + eps)   scale_rewards="batch"
        A_i =  r_i - mean_g(r)                         scale_rewards="none"  (Dr. GRPO)

    mean_g and std_g are over the G responses to the same prompt; std is the sample standard
    deviation (ddof = 1, as TRL's ``nanstd``); with G = 1 there is no group to compare with and
    every advantage is 0. ``rewards`` is flat, ``(n_groups * G,)`` with each prompt's samples next
    to each other, or ``(n_groups, G)``; a numpy array or list gives a numpy array back, a torch
    tensor gives a tensor (same shape as the input, float64 for numpy, the input's dtype for torch).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    r, kind = _as_groups(rewards, group_size)
    G = r.shape[1]
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_rewards == "group":
        std = r.std(axis=1, ddof=1, keepdims=True) if G > 1 else np.zeros((r.shape[0], 1))
        adv = centred / (std + eps)
    elif scale_rewards == "batch":
        std = r.std(ddof=1) if r.size > 1 else 0.0
        adv = centred / (std + eps)
    else:
        adv = centred
    shape = tuple(rewards.shape) if kind == "torch" else np.shape(rewards)
    adv = adv.reshape(shape)
    if kind == "torch":
        return torch.as_tensor(adv, dtype=rewards.dtype if rewards.is_floating_point() else torch.float32,
                               device=rewards.device)
    return adv


def zero_std_groups(rewards, group_size: int, atol: float = 1e-8) -> np.ndarray:
    """Which groups have all G rewards equal (reward std 0: every advantage is 0, no gradient) (Lesson 15).

    Returns a boolean numpy array, one entry per group; its mean is TRL's ``frac_reward_zero_std``.
    """
    r, _ = _as_groups(rewards, group_size)
    return np.abs(r - r[:, :1]).max(axis=1) <= atol


# ----------------------------------------------------------------------------- verifiers
_ANSWER_SENTENCE = re.compile(r"^(\d+) plus (\d+) is (-?\d+)[.!]?$")


def answer_first(world, prompt: str, response: str) -> bool:
    """Is the response's first sentence an answer to this sum, "a plus b is n." (any n)? (Lesson 15)"""
    info = world.prompt_info(prompt)
    if info.kind != "arith":
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    sentences = parse_response(response).sentences
    m = _ANSWER_SENTENCE.match(sentences[0]) if sentences else None
    return m is not None and (int(m.group(1)), int(m.group(2))) == tuple(info.operands)


def verifier_reward(world, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The verifier of the world's arithmetic skill (Lesson 15): 1.0 when the first sentence states
    the sum and the sum is right (``answer_first`` and ``World.is_correct_arith``), else 0.0."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [float(answer_first(world, p, r) and world.is_correct_arith(p, r)) for p, r in zip(prompts, responses)]


def format_reward(world, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Half of the verifier (Lesson 15): 1.0 when the first sentence has the answer's form,
    "a plus b is n.", whatever n is. A policy can earn all of it without adding correctly."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [float(answer_first(world, p, r)) for p, r in zip(prompts, responses)]


# ----------------------------------------------------------------------------- the loss
def _tensor(x, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=float))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from err
    if x.dtype == torch.bool:
        x = x.float()
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype)
    return x


def grpo_loss(logp, old_logp, advantages, mask, clip_eps: float = 0.2, loss_type: str = "grpo",
              ref_logp=None, beta: float = 0.0, max_completion_length: int | None = None):
    """GRPO's clipped objective with an optional k3 KL penalty, aggregated per ``loss_type`` (Lesson 15).

    Per token (``logp``, ``old_logp``, ``ref_logp``: per-token log-probs of the sampled tokens under
    pi_theta, pi_old and pi_ref, shape (B, T); ``mask`` (B, T) is 1 on response tokens, EOS included):

        rho  = exp(logp - old_logp)
        k3   = exp(ref_logp - logp) - (ref_logp - logp) - 1
        l    = -min(rho * A, clip(rho, 1 - clip_eps, 1 + clip_eps) * A) + beta * k3

    ``advantages`` A is (B,) (one per response, as :func:`group_advantages` gives) or (B, T).
    Aggregation (|o_i| = response tokens of row i, L_max = ``max_completion_length``):

        "grpo"     mean_i [ sum_t l_it m_it / |o_i| ]
        "dr_grpo"  sum_it l_it m_it / (B * L_max)
        "bnpo"     sum_it l_it m_it / sum_it m_it

    Returns (loss, stats) with stats the floats ``clip_ratio`` (share of response tokens whose
    ratio the clip changed on the side it binds), ``kl`` (mean k3 over response tokens, 0 when
    beta = 0 and no ref_logp) and ``pg_loss`` (the loss without the KL term).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not (isinstance(clip_eps, (int, float)) and 0 < clip_eps < 1):
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps!r}")
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"beta (the KL coefficient) must be >= 0, got {beta!r}")
    logp = _tensor(logp, "logp")
    old_logp = _tensor(old_logp, "old_logp", logp)
    m = _tensor(mask, "mask", logp)
    adv = _tensor(advantages, "advantages", logp)
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D (batch, tokens), got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", m)):
        if t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but logp has {tuple(logp.shape)}")
    if adv.dim() == 1:
        if adv.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages has {adv.shape[0]} entries but logp has {logp.shape[0]} rows")
        adv = adv[:, None]
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages must be (B,) or logp's shape {tuple(logp.shape)}, got {tuple(adv.shape)}")
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError("mask must hold only 0 and 1")
    n_tok = m.sum(-1)
    if bool((n_tok == 0).any()):
        raise ValueError(f"rows {(n_tok == 0).nonzero().flatten().tolist()} have no response token in mask")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference's per-token log-probs); or set beta=0")
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (L_max, the generation limit) >= 1")
        if bool((n_tok > max_completion_length).any()):
            raise ValueError(f"a row has {int(n_tok.max())} response tokens, more than max_completion_length "
                             f"{max_completion_length}")

    log_ratio = (logp - old_logp) * m
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl_tok = None
    if ref_logp is not None:
        ref = _tensor(ref_logp, "ref_logp", logp)
        if ref.shape != logp.shape:
            raise ValueError(f"ref_logp has shape {tuple(ref.shape)} but logp has {tuple(logp.shape)}")
        d = (ref - logp) * m
        kl_tok = torch.exp(d) - d - 1.0           # k3 >= 0, 0 where pi_theta = pi_ref
    full = per_token + beta * kl_tok if (beta > 0) else per_token

    def aggregate(x):
        if loss_type == "grpo":
            return ((x * m).sum(-1) / n_tok).mean()
        if loss_type == "dr_grpo":
            return (x * m).sum() / (x.shape[0] * max_completion_length)
        return (x * m).sum() / n_tok.sum()

    loss = aggregate(full)
    with torch.no_grad():
        binds = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        stats = {"clip_ratio": float((binds.to(m.dtype) * m).sum() / m.sum()),
                 "kl": float((kl_tok * m).sum() / m.sum()) if kl_tok is not None else 0.0,
                 "pg_loss": float(aggregate(per_token))}
    return loss, stats


# ----------------------------------------------------------------------------- the config
@dataclass
class GRPOSpeed:
    """Switches that change speed, never the result (up to float rounding) (Lesson 15)."""

    trim_padding: bool = True
    """cut each minibatch to its own longest row instead of the rollout's longest"""
    generation_batch_size: int = 256
    """rows per call of the sampler (larger: faster, more memory)"""


@dataclass
class GRPOConfig:
    """Every setting of one GRPO run (Lesson 15; recorded in run manifests via :func:`config_dict`)."""

    steps: int = 30
    """policy updates; each one samples a fresh batch of groups"""
    prompts_per_step: int = 16
    """prompts drawn (with replacement) from the pool per step"""
    group_size: int = 8
    """G, responses sampled per prompt; the group's mean is the baseline"""
    loss_type: str = "grpo"
    """"grpo" (1/|o| per response), "dr_grpo" (constant normalizer L_max), "bnpo" (token mean)"""
    scale_rewards: str = "group"
    """divide advantages by the group's reward std ("group"), the batch's ("batch") or not ("none")"""
    beta: float = 0.0
    """KL coefficient on k3 to the reference; higher keeps the policy closer to it (0: no reference)"""
    clip_eps: float = 0.2
    """PPO clip range on the per-token probability ratio"""
    epochs: int = 1
    """passes over each step's rollouts (mu in DeepSeekMath); > 1 or several minibatches make the clip act"""
    minibatch_size: int = 64
    """responses per gradient step; prompts_per_step * group_size / minibatch_size updates per pass"""
    lr: float = 1e-4
    """peak learning rate (Adam)"""
    warmup_steps: int = 0
    """linear learning-rate warm-up, in policy steps"""
    max_grad_norm: float = 1.0
    """clip the gradient's global norm to this"""
    adam_eps: float = 1e-5
    """Adam's epsilon"""
    max_new_tokens: int = 40
    """generation limit; also L_max, the constant normalizer of "dr_grpo\""""
    temperature: float = 1.0
    """sampling temperature of the rollouts"""
    std_eps: float = 1e-4
    """eps added to the std in the advantage's denominator"""
    prefill: str = ""
    """words written for the policy at the start of some responses (part of the prompt, never trained on)"""
    prefill_per_group: int = 0
    """how many of each group's G responses start with ``prefill`` (0: none)"""
    disable_dropout: bool = True
    """train in eval mode (no dropout), so pi_theta equals pi_old before the first update"""
    eval_every: int = 10
    """call eval_fn at step 0, every this many steps, and at the end"""
    seed: int = 0
    """seeds prompt draws and sampling"""
    progress: bool = True
    """Show a tqdm progress bar."""
    speed: GRPOSpeed = field(default_factory=GRPOSpeed)
    """speed switches (see GRPOSpeed)"""

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"GRPOConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"GRPOConfig.scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        for name in ("steps", "prompts_per_step", "epochs", "minibatch_size", "max_new_tokens", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"GRPOConfig.group_size must be >= 2 (a group of 1 has no baseline), got {self.group_size}")
        for name in ("lr", "temperature", "max_grad_norm", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GRPOConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"GRPOConfig.clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.beta < 0 or self.std_eps < 0 or self.warmup_steps < 0:
            raise ValueError("GRPOConfig.beta, std_eps and warmup_steps must be >= 0")
        if not 0 <= self.prefill_per_group <= self.group_size:
            raise ValueError(f"GRPOConfig.prefill_per_group must be in [0, group_size], got {self.prefill_per_group}")
        if self.prefill_per_group and not self.prefill.strip():
            raise ValueError("GRPOConfig.prefill_per_group > 0 needs the prefill text (GRPOConfig.prefill)")


def config_dict(cfg: GRPOConfig) -> dict:
    """The config as a plain (nested) dict, for run manifests (Lesson 15)."""
    return asdict(cfg)


# ----------------------------------------------------------------------------- the loop
def _pad_batch(b: Batch, T: int, pad_id: int) -> Batch:
    extra = T - b.input_ids.shape[1]
    if extra <= 0:
        return b
    n = b.input_ids.shape[0]
    return Batch(torch.cat([b.input_ids, b.input_ids.new_full((n, extra), pad_id)], 1),
                 torch.cat([b.attention_mask, b.attention_mask.new_zeros((n, extra))], 1),
                 torch.cat([b.response_mask, b.response_mask.new_zeros((n, extra))], 1))


def rollouts(policy, tokenizer, batch_prompts: Sequence[str], cfg: GRPOConfig, seed: int):
    """One step's responses: (texts, Batch), rows in the order of ``batch_prompts`` (Lesson 15).

    With ``cfg.prefill_per_group = k > 0``, the first k responses of each group of G start with
    ``cfg.prefill``: those words are appended to the templated prompt, so they are outside the
    response mask (the policy continues from them and is never trained on them), and the text
    returned for the reward is ``prefill + " " + continuation``, what a reader would see.
    """
    decoding = DecodingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    bs = cfg.speed.generation_batch_size
    if not cfg.prefill_per_group:
        return generate(policy, tokenizer, batch_prompts, decoding, seed=seed, batch_size=bs, return_ids=True)
    G, k = cfg.group_size, cfg.prefill_per_group
    pre = [i for i in range(len(batch_prompts)) if i % G < k]
    own = [i for i in range(len(batch_prompts)) if i % G >= k]
    parts = []
    for rows, template, s in ((pre, PROMPT_TEMPLATE + " " + cfg.prefill.strip(), seed), (own, None, seed + 1)):
        if rows:
            t, b = generate(policy, tokenizer, [batch_prompts[i] for i in rows], decoding, seed=s,
                            template=template, batch_size=bs, return_ids=True)
            if template is not None:
                t = [(cfg.prefill.strip() + " " + x).strip() for x in t]
            parts.append((rows, t, b))
    T = max(b.input_ids.shape[1] for _, _, b in parts)
    pad = tokenizer.pad_token_id
    order = [i for rows, _, _ in parts for i in rows]
    texts_in = [x for _, t, _ in parts for x in t]
    padded = [_pad_batch(b, T, pad) for _, _, b in parts]
    inv = torch.as_tensor(np.argsort(order))
    batch = Batch(torch.cat([b.input_ids for b in padded])[inv], torch.cat([b.attention_mask for b in padded])[inv],
                  torch.cat([b.response_mask for b in padded])[inv])
    return [texts_in[j] for j in inv.tolist()], batch


def train_grpo(policy, tokenizer, prompts: Sequence[str],
               reward_fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]],
               cfg: GRPOConfig = GRPOConfig(), reference=None,
               eval_fn: Callable[[torch.nn.Module], dict] | None = None,
               callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``policy`` in place with GRPO against ``reward_fn`` (Lesson 15).

    prompts: the training pool; each step draws ``prompts_per_step`` of them and samples
        ``group_size`` responses to each.
    reward_fn(prompts, responses) -> one float per response (e.g. a verifier's 1/0).
    reference: the frozen model of the KL term (needed when ``cfg.beta > 0``; also used, when
        given, to log ``kl``, the mean summed log-ratio of the rollouts, nats per response).
    eval_fn(policy) -> dict of held-out metrics, merged into the history at step 0, every
        ``eval_every`` steps and at the end.
    callback(step, row) is called with each history row; returning True stops training.

    Returns one dict per policy version i = 0..steps (row i is measured on the policy after i
    updates): ``reward`` (mean over the step's rollouts), ``reward_std``, ``frac_reward_zero_std``,
    ``length`` (response tokens, EOS included), and when every reward is 0 or 1 ``length_correct``
    / ``length_wrong`` (the same over responses with reward 1 / reward 0); ``kl`` (with a
    reference); and for rows < steps the update's ``loss``, ``pg_loss``,
    ``kl_term``, ``clip_ratio``, ``grad_norm``, ``lr``; ``seconds``; plus eval_fn's keys.
    """
    if len(prompts) == 0:
        raise ValueError("train_grpo needs a non-empty prompt pool")
    if cfg.beta > 0 and reference is None:
        raise ValueError("cfg.beta > 0 needs a reference model: pass reference=preflab.ppo.frozen_copy(sft)")
    if reference is not None and reference is policy:
        raise ValueError("reference is the policy itself: pass a frozen copy (preflab.ppo.frozen_copy(policy))")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters (was it frozen as a reference?)")
    device = next(policy.parameters()).device
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if reference is not None:
        reference.eval()
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
    prompts, G = list(prompts), cfg.group_size
    history: list[dict] = []

    for step in tqdm(range(cfg.steps + 1), desc=f"grpo ({cfg.loss_type})", disable=not cfg.progress, mininterval=2):
        t0 = time.time()
        # ---- learning-rate schedule (linear warm-up, then constant)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for g in opt.param_groups:
            g["lr"] = lr
        # ---- rollouts: G samples of each prompt, neighbours in the batch
        group_prompts = [prompts[i] for i in rng.integers(len(prompts), size=cfg.prompts_per_step)]
        batch_prompts = [p for p in group_prompts for _ in range(G)]
        texts, b = rollouts(policy, tokenizer, batch_prompts, cfg, seed=cfg.seed * 100_003 + step)
        ids, attn, resp = b.input_ids.to(device), b.attention_mask.to(device), b.response_mask.to(device)
        mask = resp[:, 1:].float()                   # aligned with the per-token log-probs
        rewards = np.asarray(reward_fn(batch_prompts, texts), dtype=float)
        if rewards.shape != (len(texts),):
            raise ValueError(f"reward_fn must return one float per response, got shape {rewards.shape}")
        # ---- group-relative advantages: A_i = (r_i - mean_g r) / (std_g r + eps), or r_i - mean_g r
        adv = torch.as_tensor(group_advantages(rewards, G, cfg.scale_rewards, cfg.std_eps),
                              dtype=torch.float32, device=device)
        with torch.no_grad():
            old_logp = token_logprobs(policy, ids, attn, resp)       # pi_old: the policy that sampled
            ref_logp = token_logprobs(reference, ids, attn, resp) if reference is not None else None
        n_tok = mask.sum(-1)
        row = {"step": step, "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
               "frac_reward_zero_std": float(zero_std_groups(rewards, G).mean()),
               "length": float(n_tok.mean()), "lr": lr}
        if set(np.unique(rewards)) <= {0.0, 1.0}:
            n_np = n_tok.cpu().numpy()
            row["length_correct"] = float(n_np[rewards == 1].mean()) if (rewards == 1).any() else float("nan")
            row["length_wrong"] = float(n_np[rewards == 0].mean()) if (rewards == 0).any() else float("nan")
        if cfg.prefill_per_group:
            filled = (np.arange(len(texts)) % G) < cfg.prefill_per_group
            n_np = n_tok.cpu().numpy()
            row["length_prefilled"] = float(n_np[filled].mean())
            row["length_own"] = float(n_np[~filled].mean()) if (~filled).any() else float("nan")
        if ref_logp is not None:
            row["kl"] = float(((old_logp - ref_logp) * mask).sum(-1).mean())
        if eval_fn is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            row.update(eval_fn(policy))
        if step == cfg.steps:                        # the last row measures the final policy: no update
            row["seconds"] = time.time() - t0
            history.append(row)
            if callback is not None:
                callback(step, row)
            break
        # ---- updates: epochs x minibatches over this step's rollouts
        policy.train(not cfg.disable_dropout)
        stats: dict[str, list] = {"loss": [], "pg_loss": [], "kl_term": [], "clip_ratio": [], "grad_norm": []}
        B = ids.shape[0]
        for _ in range(cfg.epochs):
            perm = torch.as_tensor(rng.permutation(B), device=device)
            for s in range(0, B, cfg.minibatch_size):
                mb = perm[s: s + cfg.minibatch_size]
                T = int(attn[mb].sum(-1).max()) if cfg.speed.trim_padding else ids.shape[1]
                # forward: per-token log-probs under pi_theta
                logp = token_logprobs(policy, ids[mb, :T], attn[mb, :T], resp[mb, :T])
                # loss: l_t = -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) + beta * k3_t, aggregated by loss_type
                loss, info = grpo_loss(logp, old_logp[mb, :T - 1], adv[mb], mask[mb, :T - 1], cfg.clip_eps,
                                       cfg.loss_type, ref_logp[mb, :T - 1] if ref_logp is not None else None,
                                       cfg.beta, cfg.max_new_tokens + 1)   # + 1: the EOS token
                # backward, clip, step
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                stats["loss"].append(float(loss.detach()))
                stats["pg_loss"].append(info["pg_loss"])
                stats["kl_term"].append(info["kl"])
                stats["clip_ratio"].append(info["clip_ratio"])
                stats["grad_norm"].append(float(gn))
        policy.eval()
        # ---- log one dict per step
        row.update({k: float(np.mean(v)) for k, v in stats.items()})
        row["seconds"] = time.time() - t0
        history.append(row)
        if callback is not None and callback(step, row):
            break
    policy.eval()
    return history
