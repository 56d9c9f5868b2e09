"""Preference-optimization losses: DPO and its relatives, plus the SFT loss.

Every pairwise loss takes per-example sequence log-probabilities (1-D tensors, one entry per
preference pair) and returns ``(losses, chosen_rewards, rejected_rewards)``, all per example:

    losses            the per-pair loss; average it yourself (``losses.mean()``)
    chosen_rewards    beta * (policy_chosen_logps - ref_chosen_logps), detached
    rejected_rewards  beta * (policy_rejected_logps - ref_rejected_logps), detached

The implicit rewards are what TRL logs as ``rewards/chosen`` and ``rewards/rejected``;
``preference_metrics`` turns them into TRL's four reward metrics.

Argument order, everywhere: policy chosen, policy rejected, reference chosen, reference rejected.
The central quantity is the log-ratio margin

    h = (pc - rc) - (pr - rr)

i.e. how much more the policy (relative to the reference) prefers the chosen response than the
rejected one. Losses are written with ``logsigmoid`` so that margins of +-1e4 give finite values
and finite gradients.

Whether the log-probs are summed or averaged over response tokens is the caller's choice:
preflab uses what you pass. DPO is defined on summed log-probs (a sequence's log-probability);
averaging changes the objective and interacts with length bias, so say which you use.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

__all__ = [
    "dpo_loss",
    "ipo_loss",
    "cdpo_loss",
    "robust_dpo_loss",
    "hinge_loss",
    "rdpo_loss",
    "simpo_loss",
    "sft_loss",
    "preference_metrics",
]


# ----------------------------------------------------------------------------------------------
# input checks: bad input gets a ValueError that names the problem, never a deep torch traceback


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_float_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a tensor of log-probabilities, got {type(x).__name__}") from err
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return x


def _check_scalar(value, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_eps(eps) -> float:
    eps = _check_scalar(eps, "eps")
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps (the label-flip rate) must lie in [0, 0.5), got {eps}")
    return eps


def _same_shape(named: dict[str, torch.Tensor]) -> None:
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"log-prob tensors must have the same shape, got {listed}")


def _logps(pc, pr, rc, rr):
    named = {
        "policy_chosen_logps": _as_float_tensor(pc, "policy_chosen_logps"),
        "policy_rejected_logps": _as_float_tensor(pr, "policy_rejected_logps"),
        "ref_chosen_logps": _as_float_tensor(rc, "ref_chosen_logps"),
        "ref_rejected_logps": _as_float_tensor(rr, "ref_rejected_logps"),
    }
    _same_shape(named)
    return tuple(named.values())


def _margin_and_rewards(pc, pr, rc, rr, beta: float):
    """h = (pc - rc) - (pr - rr); rewards = beta * log-ratios, detached (as TRL logs them)."""
    pc, pr, rc, rr = _logps(pc, pr, rc, rr)
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    h = chosen_logratios - rejected_logratios
    return h, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# ----------------------------------------------------------------------------------------------
# the pairwise losses


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO (Rafailov et al. 2023, eq. 7), per example.

        h    = (pc - rc) - (pr - rr)
        loss = -log sigmoid(beta * h)

    beta is the KL coefficient of the RLHF objective it is derived from: a larger beta keeps the
    policy closer to the reference. At h = 0 (policy equals reference) the loss is log 2.
    Returns (losses, chosen_rewards, rejected_rewards), rewards = beta * (policy - ref), detached.

    Lesson 07.
    """
    beta = _check_scalar(beta, "beta", positive=True)
    h, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = -F.logsigmoid(beta * h)
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau):
    """IPO (Azar et al. 2023, eq. 17), per example.

        h    = (pc - rc) - (pr - rr)
        loss = (h - 1 / (2 * tau))**2

    A squared loss pulls the margin h to the target 1/(2 tau) instead of pushing it to infinity,
    so IPO does not overfit deterministic (or few, noisy) preferences the way DPO can.

    Summed or averaged log-probs: TRL's IPO divides each sequence's log-ratio by its number of
    response tokens (per-token averaged log-probs), while its other losses use sums. preflab passes
    whatever the caller computed, summed or averaged, and the caller must say which: the target
    1/(2 tau) means something different on each scale.
    Rewards are logged as tau * (policy - ref) of the log-probs given, detached.

    Lesson 09.
    """
    tau = _check_scalar(tau, "tau", positive=True)
    h, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau
    )
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return losses, chosen_rewards, rejected_rewards


def cdpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, eps):
    """Conservative DPO (cDPO, Mitchell 2023): DPO with label smoothing eps, per example.

        loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    It is the cross-entropy against a label that says "chosen wins" with probability 1 - eps.
    Its minimum is at a finite margin, beta * h = log((1 - eps) / eps), so the margin settles
    instead of growing without bound. eps must lie in [0, 0.5); eps = 0 is plain DPO.

    Lesson 09.
    """
    beta = _check_scalar(beta, "beta", positive=True)
    eps = _check_eps(eps)
    h, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    return losses, chosen_rewards, rejected_rewards


def robust_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, eps):
    """Robust DPO (rDPO, Chowdhury et al. 2024): an unbiased DPO loss under label flips, per example.

        l(h)  = -log sigmoid(beta * h)        (DPO loss if the label is right)
        l(-h) = -log sigmoid(-beta * h)       (DPO loss if the label is flipped)
        loss  = ((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 * eps)

    If each label is flipped independently with probability eps, the expectation of this loss over
    the flip equals the clean DPO loss: it de-biases rather than smooths (compare cdpo_loss). Unlike
    cDPO it can be negative and is unbounded below for eps > 0. Same form as TRL's loss_type="robust"
    with label_smoothing = eps. eps must lie in [0, 0.5).

    Lesson 09.
    """
    beta = _check_scalar(beta, "beta", positive=True)
    eps = _check_eps(eps)
    h, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    clean = -(1.0 - eps) * F.logsigmoid(beta * h)
    flipped = -eps * F.logsigmoid(-beta * h)
    losses = (clean - flipped) / (1.0 - 2.0 * eps)
    return losses, chosen_rewards, rejected_rewards


def hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Hinge loss on the DPO margin (SLiC-HF, Zhao et al. 2023), per example.

        loss = max(0, 1 - beta * h)

    Zero loss (and zero gradient) once beta * h >= 1.

    Lesson 09.
    """
    beta = _check_scalar(beta, "beta", positive=True)
    h, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = torch.relu(1.0 - beta * h)
    return losses, chosen_rewards, rejected_rewards


def rdpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta,
    alpha,
    chosen_len,
    rejected_len,
):
    """Length-regularized DPO (R-DPO, Park et al. 2024), per example.

        loss = -log sigmoid(beta * h + alpha * (|y_w| - |y_l|))

    |y_w| and |y_l| are the response lengths in tokens (chosen_len, rejected_len).

    Derivation. Maximize E_pi[r(x, y) - alpha * |y|] - beta * KL(pi || pi_ref): a length penalty
    inside the RLHF objective. Its optimum is pi*(y) ∝ pi_ref(y) exp((r(y) - alpha |y|) / beta), so
    the reward the policy implies is r(y) = beta * log(pi(y) / pi_ref(y)) + alpha * |y| + const.
    Put that into Bradley-Terry, P(y_w > y_l) = sigmoid(r(y_w) - r(y_l)), and the constant cancels,
    leaving the loss above. Reading it: when the winner is longer (|y_w| > |y_l|), part of the
    preference is already explained by length, so the margin is larger, the loss smaller, and the
    gradient that pushes the chosen response up (and with it, longer responses) is smaller. The
    policy gains less by growing. alpha = 0 is plain DPO.

    Lesson 10.
    """
    beta = _check_scalar(beta, "beta", positive=True)
    alpha = _check_scalar(alpha, "alpha", nonneg=True)
    h, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    chosen_len = _as_float_tensor(chosen_len, "chosen_len").to(h.dtype)
    rejected_len = _as_float_tensor(rejected_len, "rejected_len").to(h.dtype)
    for name, length in (("chosen_len", chosen_len), ("rejected_len", rejected_len)):
        if length.dim() > 0 and tuple(length.shape) != tuple(h.shape):
            raise ValueError(
                f"{name} must be a number or have the log-probs' shape {tuple(h.shape)}, got {tuple(length.shape)}"
            )
        if bool((length < 0).any()):
            raise ValueError(f"{name} must be >= 0 (a token count)")
    losses = -F.logsigmoid(beta * h + alpha * (chosen_len - rejected_len))
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(avg_chosen_logps, avg_rejected_logps, beta, gamma):
    """SimPO (Meng et al. 2024), per example. No reference model.

        loss = -log sigmoid(beta * (avg_c - avg_r) - gamma)

    avg_c and avg_r are per-token averaged log-probs of the chosen and rejected responses
    (length-normalized, which is what removes the length incentive); gamma is a target margin.
    Returns (losses, beta * avg_c, beta * avg_r), rewards detached.

    Lesson 10.
    """
    beta = _check_scalar(beta, "beta", positive=True)
    gamma = _check_scalar(gamma, "gamma")
    named = {
        "avg_chosen_logps": _as_float_tensor(avg_chosen_logps, "avg_chosen_logps"),
        "avg_rejected_logps": _as_float_tensor(avg_rejected_logps, "avg_rejected_logps"),
    }
    _same_shape(named)
    avg_c, avg_r = named.values()
    losses = -F.logsigmoid(beta * (avg_c - avg_r) - gamma)
    return losses, beta * avg_c.detach(), beta * avg_r.detach()


# ----------------------------------------------------------------------------------------------
# supervised finetuning


def sft_loss(logits, labels, response_mask):
    """Mean next-token cross-entropy over response tokens only (a scalar).

        loss = -(1 / N) * sum_{b, t : m[b, t+1] = 1} log softmax(logits[b, t])[labels[b, t+1]]

    logits (B, T, V) come from a forward pass on labels (B, T), the input ids. Position t predicts
    token t+1, hence the shift by one. response_mask (B, T) is 1 on the response tokens of labels
    (EOS included) and 0 on the prompt and padding, so the prompt is out of the loss. N is the
    number of predicted response tokens in the whole batch (a token-level mean, as Hugging Face
    models compute it with labels = -100 on masked tokens). A response token at position 0 has no
    prediction and is skipped.

    Lesson 01.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape (B, T, V)")
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T, V), got {tuple(logits.shape)}")
    labels = torch.as_tensor(labels)
    response_mask = torch.as_tensor(response_mask)
    batch, length, vocab = logits.shape
    if tuple(labels.shape) != (batch, length):
        raise ValueError(f"labels must have shape (B, T) = {(batch, length)} like logits, got {tuple(labels.shape)}")
    if tuple(response_mask.shape) != (batch, length):
        raise ValueError(
            f"response_mask must have shape (B, T) = {(batch, length)} like logits, got {tuple(response_mask.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    if not bool(((response_mask == 0) | (response_mask == 1)).all()):
        raise ValueError("response_mask must hold only 0 and 1")
    target = labels[:, 1:]
    mask = response_mask[:, 1:].bool()
    if not bool(mask.any()):
        raise ValueError("response_mask has no response token to predict (all zeros after position 0)")
    picked = target[mask]
    if bool((picked < 0).any()) or bool((picked >= vocab).any()):
        raise ValueError(f"labels on response tokens must be token ids in [0, {vocab}), the logits' vocabulary")
    picked_logits = logits[:, :-1][mask]
    if picked_logits.dtype in (torch.float16, torch.bfloat16):
        picked_logits = picked_logits.float()  # log-softmax in at least float32
    logprobs = F.log_softmax(picked_logits, dim=-1)
    token_logps = logprobs.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
    return -token_logps.mean()


# ----------------------------------------------------------------------------------------------
# metrics


def preference_metrics(chosen_rewards, rejected_rewards) -> dict[str, float]:
    """TRL's reward metrics, as floats (batch means).

        rewards/chosen     = mean(chosen_rewards)
        rewards/rejected   = mean(rejected_rewards)
        rewards/accuracies = mean(chosen_rewards > rejected_rewards)   (ties count as wrong)
        rewards/margins    = mean(chosen_rewards - rejected_rewards)

    Lesson 07.
    """
    named = {
        "chosen_rewards": _as_float_tensor(chosen_rewards, "chosen_rewards").detach(),
        "rejected_rewards": _as_float_tensor(rejected_rewards, "rejected_rewards").detach(),
    }
    _same_shape(named)
    chosen, rejected = named.values()
    if chosen.numel() == 0:
        raise ValueError("chosen_rewards is empty: need at least one pair")
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
    }
