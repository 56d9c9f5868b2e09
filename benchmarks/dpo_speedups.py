"""Benchmark 2: what makes preflab's DPO trainer fast, one speed switch off at a time.

The same run as benchmark 1 (tiny SFT policy, world-0 pairs, batch 32, 2 epochs, summed
log-probs, sigmoid loss) with ``DPOConfig`` as shipped and then with each switch turned off:

* ``concat_forward=False``: chosen and rejected in two forward passes instead of one.
* ``cache_reference=False``: a reference forward pass at every step instead of one cached pass.
* ``trim_padding=False``: every batch padded to the data set's longest row instead of its own.

Runs alternate (all variants, then all again, ...) and the table gives each variant's median
pairs/s and its slowdown against the shipped configuration.

It also times, on one batch of 32 pairs, the policy's forward and backward pass three ways:
preflab's ``pair_logps`` (logits at every position, padded rows), the LM head applied only at
response positions (what TRL's fused head does), and the response-only head on *packed* rows
(the 64 sequences laid end to end in rows of at most the context length, a block-diagonal
causal mask, positions restarting at each sequence: no padding). The second is a prototype in
this file; the third is ``preflab.dpo``'s ``pack_sequences`` switch. All give the same summed
log-probs (checked).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from benchmarks.common import load_average, median, row
from benchmarks.dpo_vs_trl import make_pairs, preflab_order, run_preflab

VARIANTS = {
    "shipped": {},
    "concat_forward off": {"concat_forward": False},
    "cache_reference off": {"cache_reference": False},
    "trim_padding off": {"trim_padding": False},
    "pack_sequences on": {"pack_sequences": True},
}


# ----------------------------------------------------------------------------- prototypes
def _joined(enc, idx, pad_id):
    from preflab.data import stack_pairs

    b = stack_pairs(enc, idx, pad_id)
    return b.input_ids, b.attention_mask, b.response_mask


def _head_logps(model, hidden, ids, target_mask, owner, n_seq):
    """Summed log-probs per sequence, the LM head applied only where target_mask (shifted) is set."""
    m = target_mask[:, 1:].bool()
    sel = hidden[:, :-1][m]
    logp = F.log_softmax(model.get_output_embeddings()(sel).float(), -1)
    picked = logp.gather(1, ids[:, 1:][m].unsqueeze(1)).squeeze(1)
    return torch.zeros(n_seq, dtype=picked.dtype).index_add(0, owner[:, 1:][m], picked)


def response_head_logps(model, enc, idx, pad_id):
    """Prototype: padded rows as in preflab, but the LM head only at response positions."""
    from preflab.sequences import position_ids_from

    ids, attn, resp = _joined(enc, idx, pad_id)
    hidden = model.base_model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from(attn)).last_hidden_state
    owner = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)
    s = _head_logps(model, hidden, ids, resp, owner, ids.shape[0])
    return s[: len(idx)], s[len(idx):]


def forward_backward_times(model, tok, records, batch_size: int = 32, repeats: int = 5) -> dict:
    """Median seconds of one policy forward + backward on one batch, three ways (alternating)."""
    from preflab.data import encode_pairs, pack_rows, pair_logps
    from preflab.sequences import max_context, pad_id

    enc = encode_pairs(tok, records)
    pad = pad_id(tok)
    idx = torch.as_tensor(preflab_order(len(records))[:batch_size])
    policy = copy.deepcopy(model).train()
    ways = {
        "preflab pair_logps": lambda: pair_logps(policy, enc, idx, pad),
        "LM head at response tokens only": lambda: response_head_logps(policy, enc, idx, pad),
        "packed rows + response-only head": lambda: pair_logps(policy, enc, idx, pad, pack=True),
    }
    with torch.no_grad():
        ref_c, ref_r = ways["preflab pair_logps"]()
        diffs = {}
        for name, fn in ways.items():
            c, r = fn()
            diffs[name] = max(float((c - ref_c).abs().max()), float((r - ref_r).abs().max()))
        ids, attn, _ = _joined(enc, idx, pad)
        lengths = attn.sum(-1).tolist()
        rows = pack_rows(lengths, max_context(policy))
        shape = (len(rows), max(sum(lengths[k] for k in items) for items in rows))
    times = {k: [] for k in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            policy.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            c, r = fn()
            (c.sum() - r.sum()).backward()
            times[name].append(time.perf_counter() - t0)
    real = int(attn.sum())
    return {"median_s": {k: median(v) for k, v in times.items()}, "max_abs_logp_diff": diffs,
            "padded_shape": list(ids.shape), "packed_shape": list(shape), "real_tokens": real,
            "padded_utilization": real / ids.numel(), "packed_utilization": real / (shape[0] * shape[1])}


# ----------------------------------------------------------------------------- the benchmark
def run(quick: bool = False, rounds: int | None = None, pairs: int | None = None, epochs: int = 2,
        batch_size: int = 32) -> dict:
    from preflab.model import load_policy

    rounds = rounds or (1 if quick else 2)
    batch_size = 4 if quick else batch_size
    pairs = pairs or (8 if quick else 128)
    pairs -= pairs % batch_size
    steps = epochs * pairs // batch_size
    model, tok = load_policy("tiny", device="cpu")
    records = make_pairs(pairs)
    run_preflab(model, tok, records[:batch_size], 1, batch_size, 0.1, 5e-4)  # warm-up, untimed
    runs = {k: [] for k in VARIANTS}
    for _ in range(rounds):
        for name, switches in VARIANTS.items():
            r = run_preflab(model, tok, records, steps, batch_size, 0.1, 5e-4, **switches)
            r.pop("history")
            runs[name].append(r)
    med = {k: median([r["pairs_per_s"] for r in v]) for k, v in runs.items()}
    fb = forward_backward_times(model, tok, records, batch_size, repeats=2 if quick else 5)
    base = med["shipped"]
    rows = [row("speed-ups", "preflab as shipped, pairs/s", f"{base:.1f}")]
    for name in VARIANTS:
        if name != "shipped":
            rows.append(row("speed-ups", f"{name}, pairs/s", f"{med[name]:.1f} ({med[name] / base:.2f}x the shipped speed)"))
    t = fb["median_s"]
    t0 = t["preflab pair_logps"]
    rows.append(row("speed-ups", "fwd+bwd, 1 batch: preflab pair_logps", f"{t0:.3f} s (rows {fb['padded_utilization']:.0%} real tokens)"))
    rows.append(row("speed-ups", "  prototype: LM head at response tokens", f"{t['LM head at response tokens only']:.3f} s "
                    f"({t0 / t['LM head at response tokens only']:.2f}x)"))
    rows.append(row("speed-ups", "  pack_sequences: packed rows, no padding", f"{t['packed rows + response-only head']:.3f} s "
                    f"({t0 / t['packed rows + response-only head']:.2f}x; {fb['packed_utilization']:.0%} real)"))
    return {"setup": {"pairs": pairs, "epochs": epochs, "steps": steps, "batch_size": batch_size, "rounds": rounds},
            "runs": runs, "median_pairs_per_s": med,
            "slowdown_vs_shipped": {k: base / v for k, v in med.items()},
            "forward_backward": fb, "load_average_end": load_average(), "rows": rows}
