"""Benchmark 2: what makes preflab's DPO trainer fast, one speed switch off at a time.

The same run as benchmark 1 (tiny SFT policy, world-0 pairs, batch 32, 2 epochs, summed
log-probs, sigmoid loss) with ``DPOConfig`` as shipped and then with each switch turned off:

* ``concat_forward=False``: chosen and rejected in two forward passes instead of one.
* ``cache_reference=False``: a reference forward pass at every step instead of one cached pass.
* ``trim_padding=False``: every batch padded to the data set's longest row instead of its own.

The variants run in interleaved rounds (each once per round, the order shuffled and rotated per
round) and the table gives the median over rounds of each variant's PER-ROUND ratio to the
shipped configuration, wall clock and CPU seconds, with its range. Under ``make bench`` these
runs are the ones of benchmark 1 (``dpo_vs_trl`` interleaves the switches with TRL in the same
rounds), so this module only reads them; run alone (``--only speedups``) it runs its own rounds.

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

from benchmarks.common import fmt_ratio, interleaved, load_average, median, per_round_ratios, ratio_summary, row
from benchmarks.dpo_vs_trl import PREFLAB_VARIANTS, make_pairs, preflab_order, run_preflab

VARIANTS = PREFLAB_VARIANTS  # "preflab" is the shipped configuration


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
        batch_size: int = 32, dpo: dict | None = None) -> dict:
    """Each switch against the shipped trainer; ``dpo`` = benchmark 1's result, whose tiny-model
    rounds already hold these runs (then only the forward/backward prototypes are timed here)."""
    from preflab.model import load_policy

    batch_size = 4 if quick else batch_size
    pairs = pairs or (8 if quick else 192)
    pairs -= pairs % batch_size
    steps = epochs * pairs // batch_size
    model, tok = load_policy("tiny", device="cpu")
    records = make_pairs(pairs)
    tiny = (dpo or {}).get("sizes", {}).get("tiny")
    if tiny is not None:
        runs, source = {k: tiny["runs"][k] for k in VARIANTS}, "benchmark dpo's tiny-model rounds (with TRL)"
        setup = {k: tiny["setup"][k] for k in ("pairs", "steps", "batch_size", "rounds")}
    else:
        rounds = rounds or (2 if quick else 4)
        run_preflab(model, tok, records[:batch_size], 1, batch_size, 0.1, 5e-4)  # warm-up, untimed

        def variant(sw):
            def go():
                r = run_preflab(model, tok, records, steps, batch_size, 0.1, 5e-4, **sw)
                r.pop("history")
                return r
            return go

        runs = interleaved({k: variant(sw) for k, sw in VARIANTS.items()}, rounds)["runs"]
        source, setup = "own interleaved rounds", {"pairs": pairs, "steps": steps, "batch_size": batch_size, "rounds": rounds}
    ratios = {k: {"wall": ratio_summary(per_round_ratios(runs, k, "preflab", "pairs_per_s")),
                  "cpu": ratio_summary(per_round_ratios(runs, k, "preflab", "pairs_per_cpu_s"))}
              for k in VARIANTS if k != "preflab"}
    med = {k: median([r["pairs_per_s"] for r in v]) for k, v in runs.items()}
    fb = forward_backward_times(model, tok, records[:max(batch_size, 8)] if quick else records, batch_size,
                                repeats=2 if quick else 5)
    rows = [row("speed-ups", f"preflab as shipped, pairs/s (median; {source})", f"{med['preflab']:.1f}")]
    for name, rr in ratios.items():
        rows.append(row("speed-ups", f"{name} / shipped: wall | CPU (per-round median [range])",
                        f"{fmt_ratio(rr['wall'])} | {fmt_ratio(rr['cpu'])}"))
    t = fb["median_s"]
    t0 = t["preflab pair_logps"]
    rows.append(row("speed-ups", "fwd+bwd, 1 batch: preflab pair_logps", f"{t0:.3f} s (rows {fb['padded_utilization']:.0%} real tokens)"))
    rows.append(row("speed-ups", "  prototype: LM head at response tokens", f"{t['LM head at response tokens only']:.3f} s "
                    f"({t0 / t['LM head at response tokens only']:.2f}x)"))
    rows.append(row("speed-ups", "  pack_sequences: packed rows, no padding", f"{t['packed rows + response-only head']:.3f} s "
                    f"({t0 / t['packed rows + response-only head']:.2f}x; {fb['packed_utilization']:.0%} real)"))
    return {"setup": dict(setup, epochs=epochs), "source": source, "runs": runs, "median_pairs_per_s": med,
            "ratio_to_shipped": ratios, "forward_backward": fb, "load_average_end": load_average(), "rows": rows}
