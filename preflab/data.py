"""Preference data as trainers consume it: validated, encoded once, batched, packed, scored.

The plumbing behind the reward-model and DPO trainers, kept out of their files so each trainer
reads top to bottom:

* :func:`check_records` — clear errors for records that are not prompt/chosen/rejected dicts;
* :func:`encode_pairs` — every chosen and rejected response tokenized once (prompt masked out,
  EOS in), with their lengths in response tokens;
* :func:`stack_pairs` — [chosen; rejected] of some rows in one right-padded batch, cut to the
  longest real row (one forward pass for both sides);
* :func:`pair_logps` — summed response log-probs of both sides of some rows (one or two forward
  passes, trimmed or padded, or :func:`packed_pair_logps`: no padding at all);
* :func:`all_pair_logps` and :func:`precompute_reference_logps` — the same for every record,
  without gradients, in large batches (DPO caches the reference's once);
* :func:`sample_policy_pairs` — on-policy pairs: two samples of a policy per prompt, labelled.

Lessons 04 (reward models) and 07 (DPO) use it through their trainers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from preflab.model import DecodingConfig, generate, model_version
from preflab.sequences import Batch, encode, max_context, pad_id, pad_to, take_rows, token_logprobs
import preflab.world as world_module  # RUBRIC is read at call time: Rubric.active() swaps it
from preflab.world import Labeler

__all__ = ["check_records", "EncodedPairs", "encode_pairs", "stack_pairs", "pack_rows", "packed_pair_logps",
           "pair_logps", "all_pair_logps", "precompute_reference_logps", "sample_policy_pairs"]

HINT = "(TRL's format; preflab.world.World.preference_pairs makes them)"


def check_records(records: Sequence[dict], what: str = "records") -> None:
    """Raise a ValueError that names the problem unless every record is a dict with string
    ``prompt``, ``chosen`` and ``rejected``, both responses non-empty. Lessons 04 and 07 (through their trainers)."""
    if len(records) == 0:
        raise ValueError(f"{what} is empty: training needs at least one prompt/chosen/rejected record {HINT}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{what}[{i}] is a {type(rec).__name__}, not a dict with keys prompt, chosen, "
                             f"rejected {HINT}")
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise ValueError(f"{what}[{i}] has no {key!r} key: each record needs the keys prompt, chosen, "
                                 f"rejected {HINT}")
            if not isinstance(rec[key], str):
                raise ValueError(f"{what}[{i}][{key!r}] must be a string, got {type(rec[key]).__name__}")
        for key in ("chosen", "rejected"):
            if not rec[key].strip():
                raise ValueError(f"{what}[{i}] has an empty {key!r} response: every response needs at least "
                                 f"one token. Drop such records (preflab.pairs.drop_empty(records)) or fill in the response.")


@dataclass
class EncodedPairs:
    """All chosen and all rejected responses, encoded once (right-padded to the data set's longest). Lessons 04 and 07 (through their trainers)."""

    chosen: Batch
    rejected: Batch
    chosen_len: torch.Tensor    # response tokens per example, EOS included
    rejected_len: torch.Tensor

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(tokenizer, records: Sequence[dict]) -> EncodedPairs:
    """Tokenize every record once (prompt masked out, EOS in the response). Lessons 04 and 07 (through their trainers)."""
    check_records(records)
    prompts = [r["prompt"] for r in records]
    chosen = encode(tokenizer, prompts, [r["chosen"] for r in records])
    rejected = encode(tokenizer, prompts, [r["rejected"] for r in records])
    return EncodedPairs(chosen, rejected, chosen.response_mask.sum(-1), rejected.response_mask.sum(-1))


def stack_pairs(enc: EncodedPairs, idx, pad: int, trim: bool = True) -> Batch:
    """[chosen; rejected] of rows ``idx`` in one batch, both sides padded to one width: the
    batch's longest real row (``trim``), else the data set's longest. Lesson 04 (one forward pass for both sides) and 07."""
    c, r = take_rows(enc.chosen, idx), take_rows(enc.rejected, idx)
    if trim:
        T = int(max(c.attention_mask.sum(-1).max(), r.attention_mask.sum(-1).max()))
    else:
        T = max(enc.chosen.input_ids.shape[1], enc.rejected.input_ids.shape[1])
    c, r = pad_to(c, T, pad), pad_to(r, T, pad)
    return Batch(torch.cat([c.input_ids, r.input_ids]), torch.cat([c.attention_mask, r.attention_mask]),
                 torch.cat([c.response_mask, r.response_mask]))


def _summed(model, b: Batch) -> torch.Tensor:
    return token_logprobs(model, b.input_ids, b.attention_mask, b.response_mask).sum(-1)


def pack_rows(lengths: Sequence[int], context: int) -> list[list[int]]:
    """First-fit packing: the indices of the sequences that share each row of at most ``context`` tokens. Lessons 04 and 07 (through their trainers)."""
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

    Lessons 04 and 07 (through their trainers).
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


def pair_logps(model, enc: EncodedPairs, idx, pad: int, concat_forward: bool = True,
               trim: bool = True, pack: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected responses of rows ``idx``: (chosen, rejected).

    concat_forward: one forward pass on [chosen; rejected] (both padded to a common width);
    otherwise two. trim: cut to the batch's longest row; otherwise pad to the data set's longest.
    pack: no padding at all (:func:`packed_pair_logps`); overrides the other two.

    Lessons 04 and 07 (through their trainers).
    """
    if pack:
        return packed_pair_logps(model, enc, idx)
    device = next(model.parameters()).device
    both = stack_pairs(enc, idx, pad, trim)
    n = len(idx)
    if concat_forward:
        s = _summed(model, both.to(device))
        return s[:n], s[n:]
    return (_summed(model, take_rows(both, slice(0, n)).to(device)),
            _summed(model, take_rows(both, slice(n, 2 * n)).to(device)))


@torch.no_grad()
def all_pair_logps(model, enc: EncodedPairs, pad: int, batch_size: int, progress: bool = False,
                   desc: str = "reference log-probs", pack: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_logps` of every record, in batches of ``batch_size``, without gradients (on CPU). Lessons 04 and 07 (through their trainers)."""
    was_training = model.training
    model.eval()
    out_c, out_r = [], []
    n = len(enc)
    for s in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        idx = torch.arange(s, min(n, s + batch_size))
        c, r = pair_logps(model, enc, idx, pad, concat_forward=True, trim=True, pack=pack)
        out_c.append(c.float().cpu())
        out_r.append(r.float().cpu())
    model.train(was_training)
    return torch.cat(out_c), torch.cat(out_r)


def precompute_reference_logps(reference, tokenizer, records: Sequence[dict], batch_size: int = 128,
                               progress: bool = False) -> dict:
    """The reference's summed log-probs of every chosen and rejected response, computed once.

    Returns {"chosen": (N,), "rejected": (N,), "chosen_len": (N,), "rejected_len": (N,)}, the
    lengths in response tokens (EOS included), so averaged log-probs are chosen / chosen_len.
    Lesson 07.
    """
    enc = encode_pairs(tokenizer, records)
    c, r = all_pair_logps(reference, enc, pad_id(tokenizer), batch_size, progress)
    return {"chosen": c, "rejected": r, "chosen_len": enc.chosen_len.float(), "rejected_len": enc.rejected_len.float()}


@torch.no_grad()
def sample_policy_pairs(policy, tokenizer, world, prompts: Sequence[str], labeler=None, seed: int = 0,
                        decoding=None, batch_size: int = 64) -> list[dict]:
    """On-policy preference pairs (lessons 07 and 10), as in the DPO paper's controlled-sentiment (IMDb) experiment: two
    samples per prompt from ``policy`` (usually the SFT model), labelled by a simulated ``labeler``
    (default: the world's).

    Returns records in the prompt/chosen/rejected format with the same provenance fields as
    ``World.preference_pairs``. Pairs with an empty side or two identical sides are dropped
    (they carry no preference), so fewer than ``len(prompts)`` records may come back.
    """
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
            "rubric_version": world_module.RUBRIC["version"], "data_version": world.version_hash,
        })
    return records
