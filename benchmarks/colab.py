"""Benchmark 5: Colab scale, one DPO step and one PPO step on a GPT-2-sized model (124M).

No model can be downloaded here, so the model is ``GPT2LMHeadModel(GPT2Config())``: the real
GPT-2 small shape (12 layers, 12 heads, width 768, context 1024, vocabulary 50257: 124M
parameters) with RANDOM weights, seeded. The real GPT-2 tokenizer cannot be downloaded either,
so the text is encoded with the course's tiny tokenizer (its 768 ids are a subset of the
model's 50257); generated ids beyond 768 decode to nothing. Time and memory depend on the
shapes, not on the weights, so the figures stand for real GPT-2 at these batch sizes and
lengths (prompts and responses of the synthetic world, 20-70 tokens of the tiny tokenizer;
real GPT-2 BPE would give similar counts on this English text).

* DPO step: ``preflab.dpo.train_dpo`` (sigmoid loss, summed log-probs, cached reference),
  ``max_steps`` steps; the time per step is read from the trainer's per-step clock (the first
  step, which pays one-off allocation, is reported separately). The reference pass over the
  step's pairs is timed apart.
* PPO step: ``preflab.ppo.train_ppo`` with ``steps=1``: one full PPO iteration (sample a
  response per prompt, score it with the world's gold reward, policy/reference/value passes,
  GAE, one epoch of clipped updates); its ``seconds`` for step 0. ``train_ppo`` always samples
  once more after the last update to measure the final policy; that rollout is not counted.

Peak memory: on CPU, the largest resident set size of this process sampled every 20 ms during
the step (it includes the model, the frozen reference copy and the optimizer state); on a GPU,
``torch.cuda.max_memory_allocated`` over the step. With ``--device cuda`` every step also runs
under ``torch.autocast(dtype=torch.bfloat16)`` (where the GPU supports bf16).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time

import torch

from benchmarks.common import load_average, median, row, rss_mb

SIZES = {  # (DPO pairs per step, DPO steps, PPO prompts per step, PPO new tokens)
    "cpu": (4, 3, 4, 16),
    "cuda": (16, 5, 32, 48),
    "quick": (1, 2, 2, 4),
}
QUICK_MODEL = dict(n_layer=2, n_head=2, n_embd=64, n_positions=256)  # --quick only: checks the code path


class PeakMemory:
    """Peak resident memory (CPU: sampled RSS of this process) or allocated memory (CUDA)."""

    def __init__(self, device: str, interval: float = 0.02):
        self.device, self.interval, self.peak = device, interval, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = rss_mb()
            self._t = threading.Thread(target=self._sample, daemon=True)
            self._t.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, rss_mb())


def gpt2_random(device: str, seed: int = 0, **overrides):
    """GPT-2 small's architecture (transformers' GPT2Config() defaults) with random weights.
    ``overrides`` shrink it (the smoke test uses 2 narrow layers, keeping the 50257-token vocabulary)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**overrides)
    model = GPT2LMHeadModel(cfg).to(device)
    model.eval()
    return model


def _autocast(device: str, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def dpo_step(model, tok, device: str, pairs: int, steps: int, bf16: bool = False) -> dict:
    from benchmarks.dpo_vs_trl import make_pairs
    from preflab.dpo import DPOConfig, DPOSpeed, precompute_reference_logps, train_dpo

    records = make_pairs(pairs * steps, seed=1)
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    for p in reference.parameters():
        p.requires_grad_(False)
    policy.to(device)
    reference.to(device)
    cfg = DPOConfig(beta=0.1, lr=1e-5, batch_size=pairs, max_steps=steps, progress=False,
                    speed=DPOSpeed(ref_batch_size=pairs))
    with _autocast(device, bf16):
        with PeakMemory(device) as mem:
            hist = train_dpo(policy, reference, tok, records, cfg)
        t0 = time.perf_counter()  # one step's reference pass, warm (train_dpo caches it up front)
        precompute_reference_logps(reference, tok, records[:pairs], batch_size=pairs)
        if device == "cuda":
            torch.cuda.synchronize()
        ref_s = time.perf_counter() - t0
    clock = [h["elapsed_s"] for h in hist]
    per_step = [b - a for a, b in zip(clock, clock[1:])]
    out = {"pairs_per_step": pairs, "steps": steps, "first_step_s": clock[0],
           "step_s": median(per_step) if per_step else clock[0], "reference_pass_s_per_step": ref_s,
           "peak_mb": mem.peak, "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"]}
    del policy, reference
    return out


def ppo_step(model, tok, device: str, prompts: int, new_tokens: int, bf16: bool = False) -> dict:
    from preflab.ppo import PPOConfig, frozen_copy, train_ppo
    from preflab.world import make_world

    world = make_world(0)
    pool = world.sample_prompts(64, rng=2)

    def reward_fn(ps, rs):
        return [world.gold_reward(p, r) for p, r in zip(ps, rs)]

    policy = copy.deepcopy(model).to(device)
    reference = frozen_copy(policy)
    cfg = PPOConfig(steps=1, prompts_per_step=prompts, minibatch_size=prompts, ppo_epochs=1,
                    max_new_tokens=new_tokens, eval_every=1, lr=1e-5, progress=False)
    with _autocast(device, bf16), PeakMemory(device) as mem:
        t0 = time.perf_counter()
        hist = train_ppo(policy, reference, tok, pool, reward_fn, cfg)
        total = time.perf_counter() - t0
    out = {"prompts_per_step": prompts, "max_new_tokens": new_tokens, "step_s": hist[0]["seconds"],
           "call_s_including_final_rollout": total, "response_tokens_mean": hist[0]["length"], "peak_mb": mem.peak}
    del policy, reference
    return out


def run(quick: bool = False, device: str = "cpu") -> dict:
    from preflab.model import load_tokenizer

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is "
                         "False): run on a GPU machine with a CUDA build of torch, or use --device cpu")
    pairs, steps, prompts, new_tokens = SIZES["quick" if quick else device]
    tok = load_tokenizer()
    t0 = time.perf_counter()
    with PeakMemory(device) as m_load:
        model = gpt2_random(device, **(QUICK_MODEL if quick else {}))
    n_params = sum(p.numel() for p in model.parameters())
    res = {"model": "GPT2LMHeadModel(GPT2Config()) with random weights" if not quick else
           f"GPT2LMHeadModel(GPT2Config(**{QUICK_MODEL})) with random weights (--quick)", "parameters": n_params,
           "vocab_size": model.config.vocab_size, "tokenizer": "the course's tiny tokenizer (768 ids)",
           "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
           "build_s": time.perf_counter() - t0, "model_peak_mb": m_load.peak, "torch_threads": torch.get_num_threads(),
           "load_average": load_average(), "fp32": {}, "bf16": {}}
    variants = [False] + ([True] if device == "cuda" and torch.cuda.is_bf16_supported() else [])
    rows = []
    for bf16 in variants:
        key = "bf16" if bf16 else "fp32"
        d = dpo_step(model, tok, device, pairs, steps, bf16)
        p = ppo_step(model, tok, device, prompts, new_tokens, bf16)
        res[key] = {"dpo": d, "ppo": p}
        mem = "GPU max allocated" if device == "cuda" else "peak RSS"
        rows.append(row("colab", f"DPO step, {n_params / 1e6:.0f}M, {pairs} pairs, {device} {key}",
                        f"{d['step_s']:.2f} s, {mem} {d['peak_mb']:.0f} MB"))
        rows.append(row("colab", f"PPO step, {prompts} prompts x {new_tokens} tok, {device} {key}",
                        f"{p['step_s']:.2f} s, {mem} {p['peak_mb']:.0f} MB"))
    if device == "cuda":
        res["bf16_note"] = "bf16 = torch.autocast(bfloat16) around fp32 weights" if len(variants) > 1 else \
            "this GPU does not support bf16; only fp32 measured"
    res["rows"] = rows
    return res
