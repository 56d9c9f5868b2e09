"""Prompt/response sequences as the model sees them: encoding, masks, padding, positions, log-probs.

A batch holds right-padded token ids and two masks: ``attention_mask`` (1 on real tokens) and
``response_mask`` (1 on the response's tokens, EOS included; 0 on the prompt, its template
header and padding). Log-probabilities of a response y given a prompt x are *summed* over
response tokens,

    log pi(y | x) = sum_t log pi(y_t | x, y_<t),

unless ``average=True`` (then divided by the number of response tokens). Token t is predicted
at position t - 1: the one-token shift. Positions come from the attention mask, so a
left-padded row scores the same as a right-padded one.

Devices: :func:`encode` builds batches on the CPU. The functions here that take a model move the
tensors to the model's device themselves (a GPU on Colab) and hand results back on the device the
caller's tensors are on, so a CPU batch from :func:`encode` gives CPU log-probs at either scale;
without gradients they score large batches in chunks (:func:`rows_per_pass`), so an evaluation of
hundreds of rows of GPT-2 (vocabulary 50257) fits a 16 GB GPU.

Lesson 01 teaches this module (and the masking mistake it guards against); every trainer uses it.
:mod:`preflab.model` re-exports its names, as the library contract has them there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from preflab.world import PROMPT_TEMPLATE

__all__ = ["Batch", "encode", "right_pad", "pad_to", "take_rows", "trim_padding", "pad_id", "max_context",
           "hidden_size", "position_ids_from", "model_device", "rows_per_pass", "LOGITS_BUDGET", "token_logprobs",
           "sequence_logprobs", "response_lengths", "check_masks"]


@dataclass
class Batch:
    """Right-padded token ids with masks. ``response_mask[b, t] = 1`` where token t of example b
    belongs to the response (EOS included); prompt and padding are 0. Lesson 01."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


# ----------------------------------------------------------------------------- sizes and ids
def pad_id(tokenizer) -> int:
    """The id padding is written with: the tokenizer's pad token, else its EOS. Lesson 01."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def max_context(model_or_tokenizer=None, default: int = 1024) -> int:
    """How many tokens the model can see at once (its ``n_positions``). Lesson 01."""
    cfg = getattr(model_or_tokenizer, "config", None)
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or default)


def hidden_size(model_or_config) -> int:
    """Width of the model's hidden states (``n_embd`` for GPT-2). Lesson 01."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return int(getattr(cfg, "n_embd", None) or cfg.hidden_size)


# ----------------------------------------------------------------------------- building batches
def right_pad(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int) -> Batch:
    """A :class:`Batch` from (prompt ids, response ids) rows, right-padded with ``pad``: the
    attention mask covers both parts, the response mask the response alone. Lesson 01."""
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    resp = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (p, r) in enumerate(rows):
        n, m = len(p), len(r)
        ids[b, : n + m] = torch.tensor(list(p) + list(r))
        attn[b, : n + m] = 1
        resp[b, n: n + m] = 1
    return Batch(ids, attn, resp)


def encode(tokenizer, prompts: Sequence[str], responses: Sequence[str], template: str | None = None,
           max_length: int | None = None, add_eos: bool = True) -> Batch:
    """Tokenize prompt and response separately and join them, so the mask boundary is exact.

    The prompt is shown through ``template`` (default: the world's ``PROMPT_TEMPLATE``); the
    response gets a leading space and an EOS token. Raises a clear error for an empty
    response or a prompt that does not leave room for any response token. Lesson 01.
    """
    template = template or PROMPT_TEMPLATE
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if len(prompts) == 0:
        raise ValueError("encode needs at least one (prompt, response) pair")
    max_length = max_length or getattr(tokenizer, "model_max_length", 1024)
    if max_length > 100_000:  # tokenizers without a limit report a huge sentinel
        max_length = 1024
    rows = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not isinstance(r, str) or not r.strip():
            raise ValueError(f"response {i} is empty: every response needs at least one token "
                             f"(prompt was {p!r})")
        p_ids = tokenizer(template.format(prompt=p), add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(" " + r.strip(), add_special_tokens=False)["input_ids"]
        if add_eos:
            r_ids = r_ids + [tokenizer.eos_token_id]
        if len(p_ids) >= max_length:
            raise ValueError(f"prompt {i} is {len(p_ids)} tokens, but the context holds {max_length}: "
                             f"shorten the prompt or use a model with a longer context")
        r_ids = r_ids[: max_length - len(p_ids)]  # truncate the response, never the prompt
        rows.append((p_ids, r_ids))
    return right_pad(rows, pad_id(tokenizer))


def pad_to(b: Batch, T: int, pad: int) -> Batch:
    """Right-pad (or cut padding) to exactly T columns. Lesson 01."""
    cur = b.input_ids.shape[1]
    if cur >= T:
        return Batch(b.input_ids[:, :T], b.attention_mask[:, :T], b.response_mask[:, :T])
    extra = T - cur
    n = b.input_ids.shape[0]
    return Batch(torch.cat([b.input_ids, b.input_ids.new_full((n, extra), pad)], 1),
                 torch.cat([b.attention_mask, b.attention_mask.new_zeros((n, extra))], 1),
                 torch.cat([b.response_mask, b.response_mask.new_zeros((n, extra))], 1))


def take_rows(b: Batch, idx) -> Batch:
    """The rows ``idx`` of a batch. Lesson 01."""
    return Batch(b.input_ids[idx], b.attention_mask[idx], b.response_mask[idx])


def trim_padding(batch: Batch) -> Batch:
    """Drop the columns that are padding in every row (right padding). Lesson 01."""
    T = int(batch.attention_mask.sum(-1).max())
    return Batch(batch.input_ids[:, :T], batch.attention_mask[:, :T], batch.response_mask[:, :T])


# ----------------------------------------------------------------------------- log-probs
def check_masks(input_ids, attention_mask, response_mask) -> None:
    """Clear errors for masks that do not fit the ids (the usual masking mistakes). Lesson 01."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D (batch, time), got shape {tuple(input_ids.shape)}")
    for name, m in (("attention_mask", attention_mask), ("response_mask", response_mask)):
        if m.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {tuple(m.shape)} but input_ids has {tuple(input_ids.shape)}: "
                             f"build all three with preflab.model.encode")
    if bool(((response_mask != 0) & (attention_mask == 0)).any()):
        raise ValueError("response_mask marks padding tokens (attention_mask is 0 there)")
    if bool((response_mask[:, 0] != 0).any()):
        raise ValueError("response_mask marks the first token, which has no prediction: "
                         "a response must follow at least one prompt token")
    if bool((response_mask.sum(-1) == 0).any()):
        bad = (response_mask.sum(-1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"examples {bad} have an empty response (no 1 in response_mask)")


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: 0 at each sequence's first real token. Lesson 01."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


LOGITS_BUDGET = 2 ** 27
"""The most logits (rows x positions x vocabulary) one no-grad forward pass may hold: 2^27 floats,
512 MiB in float32, so GPT-2 (vocabulary 50257) scores about 25 rows of 100 tokens per pass and a
16 GB Colab T4 holds any evaluation; the tiny model (vocabulary 768) scores up to 1365 rows of 128
tokens in one pass. Lesson 01."""


def model_device(model) -> torch.device:
    """The device a model's parameters live on (where its inputs must go). Lesson 01."""
    return next(model.parameters()).device


def rows_per_pass(model, T: int, budget: int | None = None) -> int:
    """How many rows of ``T`` tokens one no-grad forward pass scores, so its logits stay within
    ``budget`` floats (default :data:`LOGITS_BUDGET`). Lesson 01."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or 1)
    return max(1, (budget or LOGITS_BUDGET) // max(1, T * vocab))


def _token_logprobs(model, input_ids, attention_mask, response_mask, hidden):
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from(attention_mask), output_hidden_states=hidden)
    logits = out.logits[:, :-1].float()
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    if response_mask is not None:
        logp = logp * response_mask[:, 1:].to(logp.dtype)
    return logp, (out.hidden_states[-1][:, :-1] if hidden else None)


def token_logprobs(model, input_ids, attention_mask, response_mask=None, hidden: bool = False,
                   batch_size: int | None = None):
    """log pi(x_t | x_<t) for t = 1..T-1, shape (B, T-1), aligned with ``input_ids[:, 1:]``.

    Positions outside ``response_mask[:, 1:]`` (if given) are set to 0. With ``hidden``, also
    the last layer's hidden states at the predicting positions, shape (B, T-1, H) (PPO's value
    head reads them).

    The tensors may live anywhere: they go to the model's device for the forward pass, and the
    results come back on the device of ``input_ids`` (CPU tensors from :func:`encode` give CPU
    results, on a GPU too). Without gradients (under ``torch.no_grad()``) the rows go through the
    model ``batch_size`` at a time (default :func:`rows_per_pass`: logits within
    :data:`LOGITS_BUDGET`), so a large evaluation fits a small GPU; chunking moves a row's numbers
    by float rounding at most (none at all at the tiny scale, where lessons' batches fit in one pass).
    With gradients, one pass (``batch_size`` to chunk anyway). Lesson 01.
    """
    home, device = input_ids.device, model_device(model)
    B, T = input_ids.shape[0], input_ids.shape[-1]
    if batch_size is None and not torch.is_grad_enabled():
        batch_size = rows_per_pass(model, T)
    step = batch_size if batch_size and batch_size < B else B
    parts = []
    for s in range(0, max(B, 1), max(1, step)):
        rows = slice(s, s + step)
        parts.append(_token_logprobs(model, input_ids[rows].to(device), attention_mask[rows].to(device),
                                     None if response_mask is None else response_mask[rows].to(device), hidden))
    logp = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
    if hidden:
        h = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        return logp.to(home), h.to(home)
    return logp.to(home)


def sequence_logprobs(model, input_ids, attention_mask, response_mask, average: bool = False,
                      batch_size: int | None = None) -> torch.Tensor:
    """Log-probability of each example's response tokens only, shape (B,). Lesson 01.

    summed:   log pi(y|x) = sum_{t in response} log pi(x_t | x_<t)
    averaged: the same divided by the number of response tokens (``average=True``).

    As :func:`token_logprobs`: the inputs go to the model's device, the result comes back on the
    device of ``input_ids``, and without gradients the rows are scored ``batch_size`` at a time.
    """
    check_masks(input_ids, attention_mask, response_mask)
    logp = token_logprobs(model, input_ids, attention_mask, response_mask, batch_size=batch_size)
    total = logp.sum(-1)
    if average:
        return total / response_mask[:, 1:].sum(-1).to(total.dtype)
    return total


def response_lengths(batch: Batch) -> torch.Tensor:
    """Number of response tokens per example (EOS included). Lesson 01."""
    return batch.response_mask.sum(-1)
