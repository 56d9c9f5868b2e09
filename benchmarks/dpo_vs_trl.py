"""Benchmark 1: preflab's DPO trainer against TRL's ``DPOTrainer``, side by side.

Both train a fresh copy of the tiny SFT policy (``preflab.model.load_policy("tiny")``) on the
same preference pairs (``make_world(0).preference_pairs``), in the same order, with the same
batch size, sequence limit (the model's 128-token context), number of steps, beta, learning
rate (constant, no warm-up), AdamW and gradient clipping at 1.0, in float32 on the CPU. The
loss is TRL's ``sigmoid`` (plain DPO) on SUMMED response log-probs (EOS in, prompt out), and the
reference is a frozen copy of the policy as it was before training, so the step-0 loss is
log 2 on both sides and the logged log-probs show that both sides score the same tokens.

Token sequences: TRL tokenizes its own strings. It gets ``prompt = "User: {prompt}\\nAssistant:"``
(the world's template), ``chosen = " " + chosen`` and ``rejected = " " + rejected``, and appends
the EOS token itself; the benchmark checks, pair by pair, that the token ids it trains on equal
those of ``preflab.model.encode`` and reports the token counts of both sides.

Data order: preflab shuffles each epoch with ``numpy.random.default_rng(seed).permutation(n)``;
TRL gets a sampler that yields exactly those indices, epoch after epoch, so both train on the
same batches in the same order. ``n`` is a multiple of the batch size and the run lasts
``epochs`` full passes (default 2, the usual DPO recipe and preflab's documented example).

What each timer includes:

* preflab: the whole ``train_dpo`` call: tokenizing the pairs, the reference log-probs of every
  pair (``cache_reference``: one no-grad pass up front), optimizer set-up and every step, with its
  per-step metrics.
* TRL, default (``precompute_ref_log_probs=False``): ``trainer.train()``, in which the reference
  model runs a forward pass at every step. The trainer's construction (tokenizing the data set
  with ``datasets.map``, wrapping the models) is outside the timer.
* TRL, precomputed reference (``precompute_ref_log_probs=True``, TRL's own switch for what
  preflab's ``cache_reference`` does): its reference pass over the data set (batches of
  ``precompute_ref_batch_size`` = preflab's ``ref_batch_size``) plus ``trainer.train()``.

Loading the model (once, then ``copy.deepcopy`` per run) is outside every timer. Runs alternate
(preflab, TRL, TRL-precomputed, preflab, ...) so that a change in the machine's load hits all
of them; the table gives medians.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import uuid
import warnings

import numpy as np

from benchmarks.common import load_average, median, row

# TRL must never reach the hub: set before transformers / trl / datasets are imported.
for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("TQDM_DISABLE", "1")

COMPARE_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


def _quiet() -> None:
    """No progress bars or info logs from datasets / transformers inside the timed runs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` preference pairs of world 0 (records with an empty side dropped, then cut to ``n``)."""
    from preflab.dpo import drop_empty
    from preflab.world import make_world

    world = make_world(0)
    records = drop_empty(world.preference_pairs(int(n * 1.2) + 8, rng=seed))
    if len(records) < n:  # pragma: no cover - the grammar rarely writes empty answers
        records += drop_empty(world.preference_pairs(n, rng=seed + 1))
    return records[:n]


# ----------------------------------------------------------------------------- preflab
def run_preflab(model, tok, records, steps: int, batch_size: int, beta: float, lr: float, seed: int = 0,
                **switches) -> dict:
    """Train a fresh copy of ``model`` with preflab; returns seconds, pairs/s and the history."""
    from preflab.dpo import DPOConfig, DPOSpeed, train_dpo

    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    for p in reference.parameters():
        p.requires_grad_(False)
    cfg = DPOConfig(loss_type="sigmoid", beta=beta, lr=lr, batch_size=batch_size, max_steps=steps,
                    max_grad_norm=1.0, seed=seed, progress=False, speed=DPOSpeed(ref_batch_size=128, **switches))
    load = load_average()
    c0, t0 = time.process_time(), time.perf_counter()
    history = train_dpo(policy, reference, tok, records, cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_s": cpu, "pairs_per_s": steps * batch_size / seconds,
            "pairs_per_cpu_s": steps * batch_size / cpu, "load_average": load,
            "history": [{k: h[k] for k in COMPARE_KEYS} for h in history]}


def preflab_order(n: int, epochs: int = 1, seed: int = 0) -> np.ndarray:
    """The order preflab's trainer visits the records in: one fresh permutation per epoch."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])


# ----------------------------------------------------------------------------- TRL
def trl_dataset(records):
    """TRL's prompt/chosen/rejected strings, shaped to tokenize as ``preflab.model.encode`` does."""
    from datasets import Dataset

    from preflab.world import PROMPT_TEMPLATE

    rows = [{"prompt": PROMPT_TEMPLATE.format(prompt=r["prompt"]), "chosen": " " + r["chosen"].strip(),
             "rejected": " " + r["rejected"].strip()} for r in records]
    return Dataset.from_list(rows)


def _trainer_class(order):
    import trl
    from torch.utils.data import Sampler

    class FixedOrder(Sampler):
        def __init__(self, indices):
            self.indices = [int(i) for i in indices]

        def __iter__(self):
            return iter(self.indices)

        def __len__(self):
            return len(self.indices)

    class InOrderDPOTrainer(trl.DPOTrainer):
        """TRL's DPOTrainer visiting the pairs in preflab's order (instead of its own shuffle)."""

        def _get_train_sampler(self, train_dataset=None):
            return FixedOrder(order)

    return InOrderDPOTrainer


def make_trl_trainer(model, tok, records, order, steps: int, batch_size: int, beta: float, lr: float,
                     out_dir: str, seed: int = 0):
    """A TRL DPOTrainer on fresh copies of ``model`` (policy and explicit frozen reference)."""
    _quiet()
    import trl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = trl.DPOConfig(
            output_dir=out_dir, report_to="none", save_strategy="no", push_to_hub=False,
            per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
            beta=beta, loss_type=["sigmoid"], max_length=tok.model_max_length,
            precompute_ref_log_probs=False, precompute_ref_batch_size=128,
            gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
            logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=seed, data_seed=seed,
        )
        policy, reference = copy.deepcopy(model), copy.deepcopy(model)
        trainer = _trainer_class(order)(model=policy, ref_model=reference, args=args,
                                        train_dataset=trl_dataset(records), processing_class=tok)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the log dicts go to state.log_history, not the terminal
    return trainer


def _trl_history(trainer) -> list[dict]:
    return [{k: h[k] for k in COMPARE_KEYS if k in h} for h in trainer.state.log_history if "rewards/chosen" in h]


def run_trl(model, tok, records, steps: int, batch_size: int, beta: float, lr: float, precompute: bool,
            seed: int = 0) -> dict:
    """Train a fresh copy with TRL; the timer covers training only (see the module docstring)."""
    epochs = -(-steps * batch_size // len(records))
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir:
        trainer = make_trl_trainer(model, tok, records, preflab_order(len(records), epochs, seed), steps,
                                   batch_size, beta, lr, out_dir, seed)
        load = load_average()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c0, t0 = time.process_time(), time.perf_counter()
            if precompute:
                # TRL's own precompute pass (what precompute_ref_log_probs=True runs in __init__), under the timer.
                trainer._precompute_model_hash = uuid.uuid4().hex  # never reuse a cached pass from an earlier run
                trainer.train_dataset = trainer._precompute_ref_logps(trainer.train_dataset, "train", 128)
                trainer.precompute_ref_logps = True
            trainer.train()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"seconds": seconds, "cpu_s": cpu, "pairs_per_s": steps * batch_size / seconds,
                "pairs_per_cpu_s": steps * batch_size / cpu, "load_average": load, "history": _trl_history(trainer)}


def token_check(model, tok, records, steps, batch_size, beta, lr, seed: int = 0) -> dict:
    """Compare, pair by pair, the token ids TRL trains on with ``preflab.model.encode``'s."""
    from preflab.dpo import encode_pairs

    order = np.arange(len(records))
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out_dir:
        trainer = make_trl_trainer(model, tok, records, order, steps, batch_size, beta, lr, out_dir, seed)
        ds = trainer.train_dataset
    enc = encode_pairs(tok, records)
    T = tok.model_max_length
    mismatched = 0
    counts = {"preflab_tokens": 0, "trl_tokens": 0, "preflab_response_tokens": 0, "trl_response_tokens": 0}
    for j in range(len(order)):
        ex = ds[j]
        for side, b in (("chosen", enc.chosen), ("rejected", enc.rejected)):
            n = int(b.attention_mask[j].sum())
            ours = b.input_ids[j, :n].tolist()
            resp = int(b.response_mask[j].sum())
            theirs = (ex["prompt_ids"] + ex[f"{side}_ids"])[:T]
            their_resp = len(theirs) - len(ex["prompt_ids"])
            counts["preflab_tokens"] += n
            counts["trl_tokens"] += len(theirs)
            counts["preflab_response_tokens"] += resp
            counts["trl_response_tokens"] += their_resp
            if ours != theirs or resp != their_resp:
                mismatched += 1
    return dict(counts, sequences=2 * len(order), mismatched_sequences=mismatched)


def compare_histories(a: list[dict], b: list[dict], first: int) -> dict:
    """Largest absolute difference of each logged metric over the first ``first`` steps."""
    out = {}
    n = min(first, len(a), len(b))
    for k in COMPARE_KEYS:
        diffs = [abs(a[i][k] - b[i][k]) for i in range(n) if k in a[i] and k in b[i]]
        out[k] = max(diffs) if diffs else None
    return {"steps_compared": n, "max_abs_diff": out}


# ----------------------------------------------------------------------------- the benchmark
def run(quick: bool = False, rounds: int | None = None, pairs: int | None = None, epochs: int = 2,
        batch_size: int = 32, beta: float = 0.1, lr: float = 5e-4) -> dict:
    """Alternate preflab / TRL / TRL-precomputed runs; return results and table rows."""
    import torch

    from preflab.model import load_policy

    rounds = rounds or (1 if quick else 3)
    batch_size = 4 if quick else batch_size
    pairs = pairs or (8 if quick else 192)
    pairs -= pairs % batch_size
    if pairs < batch_size:
        raise ValueError(f"pairs ({pairs}) must be at least one batch ({batch_size})")
    steps = epochs * pairs // batch_size
    compare_steps = min(steps, 5)
    model, tok = load_policy("tiny", device="cpu")
    records = make_pairs(pairs)
    tokens = token_check(model, tok, records, steps, batch_size, beta, lr)

    # warm-up (untimed): first calls pay for lazy initialization on both sides
    if not quick:
        warm = records[: 2 * batch_size]
        run_preflab(model, tok, warm, 1, batch_size, beta, lr)
        run_trl(model, tok, warm, 1, batch_size, beta, lr, precompute=False)

    runs = {"preflab": [], "preflab_packed": [], "trl": [], "trl_precomputed": []}
    for _ in range(rounds):
        runs["preflab"].append(run_preflab(model, tok, records, steps, batch_size, beta, lr))
        runs["preflab_packed"].append(run_preflab(model, tok, records, steps, batch_size, beta, lr,
                                                  pack_sequences=True))
        runs["trl"].append(run_trl(model, tok, records, steps, batch_size, beta, lr, precompute=False))
        runs["trl_precomputed"].append(run_trl(model, tok, records, steps, batch_size, beta, lr, precompute=True))

    ratio = [p["pairs_per_s"] / t["pairs_per_s"] for p, t in zip(runs["preflab"], runs["trl"])]
    ratio_pre = [p["pairs_per_s"] / t["pairs_per_s"] for p, t in zip(runs["preflab"], runs["trl_precomputed"])]
    pf_hist, trl_hist = runs["preflab"][0]["history"], runs["trl"][0]["history"]
    agree = compare_histories(pf_hist, trl_hist, compare_steps)
    agree_pre = compare_histories(pf_hist, runs["trl_precomputed"][0]["history"], compare_steps)
    step0 = {"preflab": pf_hist[0], "trl": trl_hist[0] if trl_hist else None}
    loss0_diff = abs(pf_hist[0]["loss"] - trl_hist[0]["loss"]) if trl_hist else None
    med = {k: median([r["pairs_per_s"] for r in v]) for k, v in runs.items()}
    med_cpu = {k: median([r["pairs_per_cpu_s"] for r in v]) for k, v in runs.items()}
    ratio_cpu = [p["pairs_per_cpu_s"] / t["pairs_per_cpu_s"] for p, t in zip(runs["preflab"], runs["trl"])]
    ratio_packed = [p["pairs_per_s"] / t["pairs_per_s"] for p, t in zip(runs["preflab_packed"], runs["trl"])]
    ratio_packed_cpu = [p["pairs_per_cpu_s"] / t["pairs_per_cpu_s"] for p, t in zip(runs["preflab_packed"], runs["trl"])]
    packed_loss0_diff = abs(runs["preflab_packed"][0]["history"][0]["loss"] - pf_hist[0]["loss"])
    res = {
        "setup": {"steps": steps, "epochs": epochs, "batch_size": batch_size, "pairs": len(records), "rounds": rounds, "beta": beta,
                  "lr": lr, "loss_type": "sigmoid", "logps": "summed", "max_length": tok.model_max_length,
                  "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "tokens": tokens,
        "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "history"} for r in v] for k, v in runs.items()},
        "median_pairs_per_s": med, "median_pairs_per_cpu_s": med_cpu,
        "median_ratio_cpu_time": median(ratio_cpu), "ratios_cpu_time": ratio_cpu,
        "median_ratio": median(ratio), "ratios": ratio,
        "median_ratio_packed": median(ratio_packed), "ratios_packed": ratio_packed,
        "median_ratio_packed_cpu_time": median(ratio_packed_cpu), "packed_step0_loss_abs_diff": packed_loss0_diff,
        "median_ratio_vs_trl_precomputed": median(ratio_pre), "ratios_vs_trl_precomputed": ratio_pre,
        "step0": step0, "step0_loss_abs_diff": loss0_diff,
        "agreement": agree, "agreement_trl_precomputed": agree_pre,
        "histories": {"preflab": pf_hist[:compare_steps], "trl": trl_hist[:compare_steps]},
    }
    md = agree["max_abs_diff"]
    rows = [
        row("dpo", "preflab pairs/s (median)", f"{med['preflab']:.1f}"),
        row("dpo", "TRL DPOTrainer pairs/s (median)", f"{med['trl']:.1f}"),
        row("dpo", "TRL precompute_ref_log_probs pairs/s", f"{med['trl_precomputed']:.1f}"),
        row("dpo", "ratio preflab / TRL (median)", f"{res['median_ratio']:.2f}x", ">= 2x",
            res["median_ratio"] >= 2.0),
        row("dpo", "preflab pack_sequences=True pairs/s (median)", f"{med['preflab_packed']:.1f}"),
        row("dpo", "ratio preflab packed / TRL (median)", f"{res['median_ratio_packed']:.2f}x", ">= 2x",
            res["median_ratio_packed"] >= 2.0),
        row("dpo", "ratio per CPU-second preflab packed / TRL", f"{res['median_ratio_packed_cpu_time']:.2f}x"),
        row("dpo", "step-0 loss |packed - padded|", f"{packed_loss0_diff:.1e}", "<= 1e-5", packed_loss0_diff <= 1e-5),
        row("dpo", "ratio preflab / TRL precomputed", f"{res['median_ratio_vs_trl_precomputed']:.2f}x"),
        row("dpo", "ratio per CPU-second preflab / TRL", f"{res['median_ratio_cpu_time']:.2f}x"),
        row("dpo", "step-0 loss |preflab - TRL|", f"{loss0_diff:.1e}" if loss0_diff is not None else "n/a",
            "<= 1e-5", loss0_diff is not None and loss0_diff <= 1e-5),
        row("dpo", f"max |diff| rewards/* over {agree['steps_compared']} steps",
            f"{max(md[k] for k in ('rewards/chosen', 'rewards/rejected', 'rewards/margins')):.1e}", "<= 1e-3",
            max(md[k] for k in ('rewards/chosen', 'rewards/rejected', 'rewards/margins')) <= 1e-3),
        row("dpo", f"max |diff| rewards/accuracies, {agree['steps_compared']} steps", f"{md['rewards/accuracies']:.3f}",
            "<= 1/batch", md["rewards/accuracies"] <= 1.0 / batch_size + 1e-9),
        row("dpo", "max |diff| logps/chosen at step 0",
            f"{abs(pf_hist[0]['logps/chosen'] - trl_hist[0]['logps/chosen']):.1e}", "<= 1e-3",
            abs(pf_hist[0]["logps/chosen"] - trl_hist[0]["logps/chosen"]) <= 1e-3),
        row("dpo", "token sequences that differ (TRL vs encode)",
            f"{tokens['mismatched_sequences']}/{tokens['sequences']}", "0", tokens["mismatched_sequences"] == 0),
    ]
    res["rows"] = rows
    return res
