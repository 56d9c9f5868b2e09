"""Colab-scale check: the course's own code at PREFLAB_SCALE=gpt2 on a GPU.

    python scripts/colab_scale_check.py --out build/colab_scale.json

Where GPT-2's weights can be downloaded (Colab), set nothing: ``load_policy("gpt2")`` fetches
them. Where they cannot (an offline machine), ``--random`` saves a GPT-2 124M-shaped model with
random weights and the tiny tokenizer to a temporary directory and points PREFLAB_GPT2_PATH at
it, so every code path runs (SFT on first use, sampling, DPO and PPO steps) even though
the quality numbers then mean little. Prints and writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/colab_scale.json")
    ap.add_argument("--random", action="store_true", help="random GPT-2 124M-shaped weights (offline)")
    ap.add_argument("--sft-steps", type=int, default=400)
    ap.add_argument("--smoke", action="store_true", help="a 2-layer random model, to test this script on a CPU")
    args = ap.parse_args(argv)

    import torch
    from preflab.dpo import DPOConfig, train_dpo
    from preflab.evaluate import evaluate_policy, heldout_prompts
    from preflab.model import GPT2_BASE, GPT2_SFT, load_gpt2_sft, load_policy, load_tokenizer
    from preflab.ppo import PPOConfig, frozen_copy, train_ppo
    from preflab.world import make_world

    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ["PREFLAB_SCALE"] = "gpt2"
    os.environ.setdefault("PREFLAB_CACHE", tempfile.mkdtemp(prefix="preflab-cache-"))
    if args.random:
        from transformers import GPT2Config, GPT2LMHeadModel
        tok = load_tokenizer()
        d = Path(tempfile.mkdtemp(prefix="gpt2-random-"))
        shape = dict(n_layer=2, n_embd=64, n_head=2) if args.smoke else {}
        cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, **shape)
        GPT2LMHeadModel(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        os.environ["PREFLAB_GPT2_PATH"] = str(d)
        report["weights"] = (f"random ({'smoke-test shape' if args.smoke else 'GPT-2 124M shape'}, "
                             f"vocab {len(tok)} from the tiny tokenizer)")
    world = make_world(0)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    t = time.time()
    base, tok = load_policy("gpt2", stage="base", device=dev)
    sft, _ = load_gpt2_sft(device=dev, steps=args.sft_steps)
    sync()
    report["parameters_M"] = round(sum(p.numel() for p in sft.parameters()) / 1e6, 1)
    report["base_and_sft_build_s"] = round(time.time() - t, 1)
    report["base_recipe"] = GPT2_BASE
    report["sft_recipe"] = {**GPT2_SFT, "steps": args.sft_steps}

    prompts = heldout_prompts(world, 128)
    t = time.time()
    report["eval_base"] = evaluate_policy(base, tok, world, prompts, seed=0)
    report["eval_sft"] = evaluate_policy(sft, tok, world, prompts, reference=base, seed=0)
    report["eval_s"] = round(time.time() - t, 1)

    pairs = world.preference_pairs(256, rng=1)
    for dtype in ("fp32", "bf16"):
        if dtype == "bf16" and dev != "cuda":
            continue
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu", enabled=False)
        policy, ref = frozen_copy(sft), frozen_copy(sft)
        policy.requires_grad_(True).train()
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with ctx:
            sync(); t = time.time()
            hist = train_dpo(policy, ref, tok, pairs, DPOConfig(beta=0.1, lr=1e-5, batch_size=32, max_steps=6,
                                                                progress=False))
            sync()
        report[f"dpo_{dtype}"] = {"s_per_step_incl_ref_cache": round((time.time() - t) / 6, 3),
                                  "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"],
                                  "peak_gpu_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev == "cuda" else None}
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        policy = frozen_copy(sft).requires_grad_(True).train()
        with ctx:
            sync(); t = time.time()
            hist = train_ppo(policy, ref, tok, world.sample_prompts(256, rng=2),
                             lambda ps, rs: [world.gold_reward(p, r) for p, r in zip(ps, rs)],
                             PPOConfig(steps=3, prompts_per_step=64, minibatch_size=32, lr=1e-6, eval_every=100,
                                       progress=False))
            sync()
        report[f"ppo_{dtype}"] = {"s_per_step": round((time.time() - t) / 3, 3), "reward_last": hist[-1].get("reward"),
                                  "peak_gpu_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev == "cuda" else None}
        del policy, ref
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
