"""Supervised finetuning (SFT) with a response-only loss.

The loss is the mean next-token cross-entropy over *response* tokens (EOS included):

    L(theta) = -(1/N) * sum_{(x, y)} sum_t log pi_theta(y_t | x, y_<t)

with N the number of response tokens in the batch. The prompt and its template header are
masked out: with ``mask_prompt=False`` they enter the loss too, and the model spends its
capacity learning to write user prompts (lesson 01 measures what that costs).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from preflab.losses import sft_loss
from preflab.model import encode, max_context, position_ids_from


def cosine_lr(step: int, total: int, lr: float, warmup: int = 20) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_sft(model, tokenizer, pairs: Sequence[tuple[str, str]], steps: int = 200, batch_size: int = 32,
              lr: float = 1e-3, seed: int = 0, mask_prompt: bool = True, weight_decay: float = 0.01,
              callback: Callable[[int, float], None] | None = None, progress: bool = True) -> list[float]:
    """Finetune ``model`` in place on (prompt, response) pairs; return the loss per step.

    ``mask_prompt=True`` is the correct response-only loss; ``False`` puts every real token
    (prompt included) in the loss, the common masking mistake.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if len(pairs) == 0:
        raise ValueError("train_sft needs at least one (prompt, response) pair")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses = []
    model.train()
    for step in tqdm(range(steps), desc="sft", disable=not progress, mininterval=2):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr)
        idx = rng.integers(len(pairs), size=batch_size)
        b = encode(tokenizer, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx],
                   max_length=max_context(model)).to(device)
        mask = b.response_mask if mask_prompt else b.attention_mask
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       position_ids=position_ids_from(b.attention_mask)).logits
        loss = sft_loss(logits, b.input_ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return losses
