"""Supervised finetuning (SFT) with a response-only loss. Lesson 01.

The loss is the mean next-token cross-entropy over *response* tokens (EOS included):

    L(theta) = -(1/N) * sum_{(x, y)} sum_t log pi_theta(y_t | x, y_<t)

with N the number of response tokens in the batch. The prompt and its template header are
masked out: with ``mask_prompt=False`` they enter the loss too, and the model spends its
capacity learning to write user prompts (lesson 01 measures what that costs).

    from preflab.sft import SFTConfig, train_sft
    history = train_sft(model, tok, world.demonstrations(2000), SFTConfig(steps=200))
    history[-1]["loss"]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from preflab.losses import sft_loss
from preflab.schedule import lr_at, set_lr
from preflab.sequences import encode, max_context, position_ids_from

__all__ = ["SFTConfig", "train_sft"]


@dataclass
class SFTConfig:
    """Every setting of one SFT run (recorded in run manifests via ``asdict``). Lesson 01."""

    steps: int = 200
    """Optimizer steps (each draws a fresh batch with replacement)."""
    batch_size: int = 32
    """(prompt, response) pairs per step."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_steps: int = 20
    """Linear warm-up steps, then cosine decay to 0 at the last step."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW's moment coefficients (0.98: a shorter memory for the second moment, as in small-model recipes)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    mask_prompt: bool = True
    """True: the response-only loss. False: every real token, prompt included (the common mistake)."""
    seed: int = 0
    """Seeds the batch sampling (numpy) and torch."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def train_sft(model, tokenizer, pairs: Sequence[tuple[str, str]], cfg: SFTConfig = SFTConfig(),
              callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Finetune ``model`` in place on (prompt, response) pairs; return one dict per step:
    ``step``, ``lr``, ``loss`` (the batch's mean response NLL, before the update), ``grad_norm``,
    ``elapsed_s``. ``callback(step, metrics)`` is called after each step; True stops training. Lesson 01."""
    if len(pairs) == 0:
        raise ValueError("train_sft needs at least one (prompt, response) pair")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    for step in tqdm(range(cfg.steps), desc="sft", disable=not cfg.progress, mininterval=2):
        # schedule
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, decay="cosine")
        set_lr(opt, lr)
        # forward
        idx = rng.integers(len(pairs), size=cfg.batch_size)
        b = encode(tokenizer, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx],
                   max_length=max_context(model)).to(device)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       position_ids=position_ids_from(b.attention_mask)).logits
        # loss: -(1/N) sum over masked tokens of log pi(x_t | x_<t)
        mask = b.response_mask if cfg.mask_prompt else b.attention_mask
        loss = sft_loss(logits, b.input_ids, mask)
        # backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf")).item()
        opt.step()
        # log
        m = {"step": step, "lr": lr, "loss": loss.item(), "grad_norm": gn, "elapsed_s": time.perf_counter() - t0}
        history.append(m)
        if callback is not None and callback(step, m):
            break
    model.eval()
    return history


def config_dict(cfg: SFTConfig) -> dict:
    """The config as a plain dict (for run manifests). Lesson 01."""
    return asdict(cfg)
