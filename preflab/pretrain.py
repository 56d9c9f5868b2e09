"""Pretraining: the next-token loss on *every* token of plain world text. Lesson 00 (where the
"base" policy comes from; lesson 01 contrasts it with SFT's response-only loss).

    L(theta) = -(1/N) * sum_{text} sum_{t >= 1} log pi_theta(x_t | x_<t)

with N the number of predicted tokens in the batch (every real token after the first; each text
ends with the end-of-sequence token, padding is never predicted). The tiny scale's ``base``
checkpoint was trained this way from random weights (``make checkpoints``); at GPT-2 scale the
same loss adapts the pretrained GPT-2 to the world's text before SFT
(:func:`preflab.model.load_gpt2_base`), so that "base" means the same thing at both scales: a
model that has read the world but was never shown a demonstration.

    from preflab.pretrain import PretrainConfig, train_lm
    history = train_lm(model, tok, world.corpus(5000), PretrainConfig(steps=100))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from preflab.schedule import lr_at, set_lr
from preflab.sequences import max_context

__all__ = ["PretrainConfig", "train_lm"]


@dataclass
class PretrainConfig:
    """Every setting of one pretraining run. Lesson 00."""

    steps: int = 1000
    """Optimizer steps (each draws a fresh batch of texts with replacement)."""
    batch_size: int = 64
    """Texts per step."""
    lr: float = 3e-3
    """Peak learning rate (3e-3 trains the tiny model from scratch; a pretrained GPT-2 wants ~20x less)."""
    warmup_steps: int = 50
    """Linear warm-up steps, then cosine decay to 0 at the last step."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW's moment coefficients."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this."""
    seed: int = 0
    """Seeds the batch sampling (numpy)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _lm_batch(ids: list[list[int]], rows: np.ndarray, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and their attention mask for the texts ``rows``."""
    chosen = [ids[i] for i in rows]
    T = max(len(r) for r in chosen)
    x = torch.full((len(chosen), T), pad, dtype=torch.long)
    m = torch.zeros((len(chosen), T), dtype=torch.long)
    for b, r in enumerate(chosen):
        x[b, : len(r)] = torch.tensor(r)
        m[b, : len(r)] = 1
    return x, m


def train_lm(model, tokenizer, texts: Sequence[str], cfg: PretrainConfig = PretrainConfig(),
             callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``model`` in place with the next-token loss on every token of ``texts``; return one dict per
    step: ``step``, ``lr``, ``loss`` (the batch's mean NLL per predicted token, before the update),
    ``grad_norm``, ``elapsed_s``. ``callback(step, metrics)`` is called after each step; True stops training.
    Lesson 00."""
    if len(texts) == 0:
        raise ValueError("train_lm needs at least one text")
    rng = np.random.default_rng(cfg.seed)
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][: max_context(model) - 1] + [eos] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    for step in tqdm(range(cfg.steps), desc="pretrain", disable=not cfg.progress, mininterval=5):
        # schedule
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, decay="cosine")
        set_lr(opt, lr)
        # forward
        x, m = _lm_batch(ids, rng.integers(len(ids), size=cfg.batch_size), pad)
        x, m = x.to(device), m.to(device)
        # loss: -(1/N) sum_t log pi(x_t | x_<t) over real tokens (transformers shifts the labels by one;
        # -100 marks the padding it must not predict)
        loss = model(input_ids=x, attention_mask=m, labels=x.masked_fill(m == 0, -100)).loss
        # backward, clip, step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm).item()
        opt.step()
        # log
        metrics = {"step": step, "lr": lr, "loss": loss.item(), "grad_norm": gn,
                   "elapsed_s": time.perf_counter() - t0}
        history.append(metrics)
        if callback is not None and callback(step, metrics):
            break
    model.eval()
    return history
