"""RLHF with PPO, from scratch and readable (in the spirit of CleanRL's single-file agents).

One PPO step:

1. **Rollout.** Sample one response y per prompt x from the current policy pi_theta.
2. **Score.** The sequence reward R(x, y) = reward_fn(x, y) (gold or a learned proxy).
3. **Per-token rewards with a KL penalty** to the frozen reference pi_ref (the SFT model).
   At each response token t (EOS included):

       r_t = -kl_coef * (log pi_old(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))   (+ R(x, y) at the last token)

   Summed over tokens, the penalty is kl_coef times the sequence log-ratio, whose mean over
   samples estimates KL(pi || pi_ref). A higher kl_coef keeps the policy closer to the reference.
4. **Advantages** by GAE (Schulman et al. 2016) from a value estimate V_t:

       delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token is 0)
       A_t     = sum_{k >= t} (gamma * lam)^(k - t) * delta_k,      returns G_t = A_t + V_t

   computed for all tokens at once with a discount matrix (no Python loop over tokens).
5. **Update** for ``ppo_epochs`` passes over minibatches, maximizing the clipped surrogate

       L_clip = E_t[ min(rho_t * A_t, clip(rho_t, 1 - eps, 1 + eps) * A_t) ],
       rho_t = pi_theta(y_t | ...) / pi_old(y_t | ...)

   and fitting the value head with vf_coef * E_t[(V_t - G_t)^2] / 2. With ``ptx_coef > 0`` the
   loss also has InstructGPT's pretraining mix, ptx_coef * (next-token loss on ``ptx_texts``)
   ("PPO-ptx"), which holds on to skills the reward does not ask for.

Every expectation above is a mean over *response tokens only* (prompt and padding masked out).

**The value model** here is a small MLP head (``ValueHead``) on the policy's last-layer hidden
states, *detached*: it reads the policy's features but its loss never changes the policy, so
the policy moves only through the PPO objective (and the optional ptx term). The reference is a
frozen copy that never trains.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from preflab.model import DecodingConfig, generate
from preflab.sequences import hidden_size, max_context, right_pad, token_logprobs

__all__ = ["PPOConfig", "ValueHead", "train_ppo", "gae_advantages", "per_token_rewards",
           "clipped_surrogate", "whiten", "frozen_copy"]


@dataclass
class PPOConfig:
    """Every PPO hyperparameter, in one place (recorded in run manifests via ``asdict``). Lesson 06."""

    steps: int = 40
    """Policy updates; the history has steps + 1 entries (entry 0 is the starting policy)."""
    prompts_per_step: int = 64
    """Prompts drawn (with replacement) per step, one rollout each."""
    kl_coef: float = 0.05
    """Weight of the per-token KL penalty: higher keeps the policy closer to the reference."""
    clip_eps: float = 0.2
    """PPO's clip range on the probability ratio rho_t."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ppo_epochs: int = 2
    """Passes over each step's rollouts."""
    minibatch_size: int = 32
    """Rollouts per gradient step within a pass."""
    lr: float = 3e-4
    """Policy learning rate (Adam, constant)."""
    value_lr: float = 3e-3
    """Value head learning rate (Adam, constant)."""
    adam_eps: float = 1e-5
    """Adam's epsilon (CleanRL's PPO value, larger than torch's 1e-8)."""
    value_width: int = 64
    """Hidden width of the value head's MLP."""
    gamma: float = 1.0
    """GAE discount (1: no discount within a reply)."""
    lam: float = 0.95
    """GAE's bias-variance trade-off lambda."""
    max_new_tokens: int = 40
    """Longest rollout, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    whiten_advantages: bool = True
    """Normalize advantages to mean 0, sd 1 over the step's response tokens."""
    max_grad_norm: float = 1.0
    """Clip the policy gradient's global norm to this."""
    ptx_coef: float = 0.0
    """Weight of the pretraining-mix LM loss (0: plain PPO; InstructGPT's PPO-ptx uses > 0)."""
    ptx_batch_size: int = 32
    """Pretraining texts per gradient step for the ptx term."""
    eval_every: int = 10
    """Call eval_fn every this many steps (and always at step 0 and at the end)."""
    seed: int = 0
    """Seeds prompt draws and minibatch order (numpy), torch, and step t's rollouts (sampling seed seed * 100003 + t)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self):
        positive = dict(steps=self.steps, prompts_per_step=self.prompts_per_step, ppo_epochs=self.ppo_epochs,
                        minibatch_size=self.minibatch_size, lr=self.lr, max_new_tokens=self.max_new_tokens,
                        temperature=self.temperature, clip_eps=self.clip_eps, max_grad_norm=self.max_grad_norm,
                        eval_every=self.eval_every, value_lr=self.value_lr, ptx_batch_size=self.ptx_batch_size)
        for name, v in positive.items():
            if not v > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {v}")
        for name in ("kl_coef", "vf_coef", "ptx_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"PPOConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}")


class ValueHead(nn.Module):
    """V(s_t): a two-layer MLP on the policy's last hidden state at token t, giving one scalar. Lesson 06."""

    def __init__(self, hidden_size: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off: the reference policy. Lesson 06."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ----------------------------------------------------------------------------- the pieces
def _forward(model, input_ids, attention_mask, hidden: bool = False):
    """Per-token log-probs (B, T-1) and, with ``hidden``, the last hidden states (B, T-1, H), or None."""
    if hidden:
        return token_logprobs(model, input_ids, attention_mask, hidden=True)
    return token_logprobs(model, input_ids, attention_mask), None


def per_token_rewards(scores: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -kl_coef * (logp_t - logp_ref_t) on response tokens, plus the sequence score at the
    last response token of each row. All (B, T) except ``scores`` (B,); zero outside ``mask``. Lesson 06."""
    mask = mask.to(logp.dtype)
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("every row needs at least one response token in mask")
    rewards = -kl_coef * (logp - logp_ref) * mask
    T = mask.shape[1]
    last = (mask * torch.arange(T, device=mask.device)).argmax(-1)  # index of the last response token
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each row's response tokens (a contiguous block marked by ``mask``), vectorized.

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t, and A_t = sum_{k >= t} (gamma*lam)^(k-t) delta_k
    (as a matrix product with D[t, k] = (gamma*lam)^(k-t) for k >= t). Returns (advantages,
    returns = advantages + values), both zero outside the mask.

    Lesson 06.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"rewards, values and mask must have one shape, got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    m = mask.to(values.dtype)
    v = values * m
    v_next = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    delta = (rewards + gamma * v_next - v) * m
    T = rewards.shape[1]
    idx = torch.arange(T, device=rewards.device)
    power = (idx[None, :] - idx[:, None]).to(values.dtype)  # k - t
    D = torch.where(power >= 0, (gamma * lam) ** power.clamp(min=0), torch.zeros_like(power))
    adv = (delta @ D.T) * m
    return adv, (adv + v) * m


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sd over the masked entries; zero outside the mask. Lesson 06."""
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                      clip_eps: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped policy loss (to minimize), a mean over masked tokens:

        loss = E_t[ max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) ],  rho_t = exp(logp - old_logp)

    Lesson 06.
    """
    m = mask.to(logp.dtype)
    n = m.sum().clamp(min=1)
    log_ratio = (logp - old_logp) * m
    ratio = torch.exp(log_ratio)
    loss = (torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)) * m).sum() / n
    with torch.no_grad():
        clipfrac = (((ratio - 1).abs() > clip_eps).to(m.dtype) * m).sum() / n
        approx_kl = (((ratio - 1) - log_ratio) * m).sum() / n  # k3 between old and new policy
    return loss, {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


def _lm_batch(tokenizer, texts: Sequence[str], device, max_length: int):
    """Right-padded ids of plain texts (with EOS) for the pretraining-mix loss."""
    eos = tokenizer.eos_token_id
    b = right_pad([([], tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 1] + [eos]) for t in texts],
                  tokenizer.pad_token_id)
    return b.input_ids.to(device), b.attention_mask.to(device)


# ----------------------------------------------------------------------------- the loop
def train_ppo(policy, reference, tokenizer, prompts: Sequence[str],
              reward_fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]],
              cfg: PPOConfig = PPOConfig(), ptx_texts: Sequence[str] | None = None,
              eval_fn: Callable[[nn.Module], dict] | None = None,
              callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``policy`` in place with PPO against ``reward_fn`` and a KL penalty to ``reference``.

    prompts: the training prompt pool (each step draws ``prompts_per_step`` of them with replacement).
    reward_fn(prompts, responses) -> one float per response (the sequence reward R(x, y)).
    ptx_texts: plain texts for the pretraining-mix term (needed when ``config.ptx_coef > 0``).
    eval_fn(policy) -> dict of held-out metrics, called at step 0, every ``eval_every`` steps, and at the end.

    Returns the history: one dict per policy version i = 0..steps (entry i is measured on the
    policy after i updates, so entry 0 is the starting policy), with ``reward`` (mean sequence
    reward of that step's rollouts), ``kl`` (mean over rollouts of the summed log-ratio
    log pi(y|x) - log pi_ref(y|x), nats per response), ``kl_penalty``, ``length`` (response tokens),
    PPO diagnostics (``clipfrac``, ``approx_kl``, ``value_loss``, ``ptx_loss``), ``seconds``, and
    whatever ``eval_fn`` returned on the steps it ran. ``callback(step, metrics)`` is called
    after each entry; if it returns True, training stops there. Lessons 06, 08 and 12.
    """
    if len(prompts) == 0:
        raise ValueError("train_ppo needs a non-empty prompt pool")
    if cfg.ptx_coef > 0 and not ptx_texts:
        raise ValueError("ptx_coef > 0 needs ptx_texts (the pretraining-mix texts); pass ptx_texts= or set ptx_coef=0")
    if reference is policy:
        raise ValueError("reference must be a separate frozen model: pass preflab.ppo.frozen_copy(policy)")
    device = next(policy.parameters()).device
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    reference.eval()
    value_head = ValueHead(hidden_size(policy), cfg.value_width).to(device)
    opt = torch.optim.Adam([{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr},
                            {"params": value_head.parameters(), "lr": cfg.value_lr}], eps=cfg.adam_eps)
    decoding = DecodingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    ctx = max_context(policy)
    history: list[dict] = []
    prompts = list(prompts)

    for step in tqdm(range(cfg.steps + 1), desc="ppo", disable=not cfg.progress, mininterval=2):
        t0 = time.time()
        # ---- 1. rollout and 2. score
        batch_prompts = [prompts[i] for i in rng.integers(len(prompts), size=cfg.prompts_per_step)]
        texts, b = generate(policy, tokenizer, batch_prompts, decoding, seed=cfg.seed * 100_003 + step,
                            return_ids=True)
        ids, attn = b.input_ids.to(device), b.attention_mask.to(device)
        mask = b.response_mask[:, 1:].to(device).float()  # aligned with the per-token log-probs
        scores = torch.as_tensor(np.asarray(reward_fn(batch_prompts, texts), dtype=float),
                                 dtype=torch.float32, device=device)
        if scores.shape != (len(texts),):
            raise ValueError(f"reward_fn must return one float per response, got shape {tuple(scores.shape)}")
        # ---- 3. per-token rewards with the KL penalty; 4. values and GAE
        with torch.no_grad():
            policy.eval()
            old_logp, hidden = _forward(policy, ids, attn, hidden=True)
            ref_logp, _ = _forward(reference, ids, attn)
            old_logp, ref_logp = old_logp * mask, ref_logp * mask
            values = value_head(hidden) * mask
            rewards = per_token_rewards(scores, old_logp, ref_logp, mask, cfg.kl_coef)
            adv, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = whiten(adv, mask)
            seq_kl = (old_logp - ref_logp).sum(-1)
        row = {"step": step, "reward": float(scores.mean()), "reward_sd": float(scores.std()),
               "kl": float(seq_kl.mean()), "kl_penalty": float(cfg.kl_coef * seq_kl.mean()),
               "length": float(mask.sum(-1).mean())}
        if eval_fn is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            row.update(eval_fn(policy))
        if step == cfg.steps:  # the last entry measures the final policy; no update after it
            row["seconds"] = time.time() - t0
            history.append(row)
            if callback is not None:
                callback(step, row)
            break
        # ---- 5. PPO epochs over minibatches
        policy.train()
        stats = {"clipfrac": [], "approx_kl": [], "value_loss": [], "pg_loss": [], "ptx_loss": []}
        B = ids.shape[0]
        for _ in range(cfg.ppo_epochs):
            perm = torch.as_tensor(rng.permutation(B), device=device)
            for s in range(0, B, cfg.minibatch_size):
                mb = perm[s: s + cfg.minibatch_size]
                # trim the minibatch to its longest real sequence (right padding)
                T = int(attn[mb].sum(-1).max())
                logp, hid = _forward(policy, ids[mb, :T], attn[mb, :T], hidden=True)
                m = mask[mb, : T - 1]
                pg_loss, info = clipped_surrogate(logp * m, old_logp[mb, : T - 1], adv[mb, : T - 1], m, cfg.clip_eps)
                v = value_head(hid.detach())  # detached: the value loss never moves the policy
                value_loss = 0.5 * (((v - returns[mb, : T - 1]) ** 2) * m).sum() / m.sum().clamp(min=1)
                loss = pg_loss + cfg.vf_coef * value_loss
                if cfg.ptx_coef > 0:
                    pick = rng.integers(len(ptx_texts), size=cfg.ptx_batch_size)
                    p_ids, p_attn = _lm_batch(tokenizer, [ptx_texts[i] for i in pick], device, ctx)
                    p_logp, _ = _forward(policy, p_ids, p_attn)
                    p_m = p_attn[:, 1:].float()
                    ptx_loss = -(p_logp * p_m).sum() / p_m.sum()
                    loss = loss + cfg.ptx_coef * ptx_loss
                    stats["ptx_loss"].append(float(ptx_loss.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                stats["clipfrac"].append(info["clipfrac"])
                stats["approx_kl"].append(info["approx_kl"])
                stats["value_loss"].append(float(value_loss.detach()))
                stats["pg_loss"].append(float(pg_loss.detach()))
        policy.eval()
        row.update({k: float(np.mean(v)) for k, v in stats.items() if v})
        row["seconds"] = time.time() - t0
        history.append(row)
        if callback is not None and callback(step, row):
            break
    return history


def config_dict(config: PPOConfig) -> dict:
    """The config as a plain dict (for manifests). Lesson 06."""
    return asdict(config)
