"""Rebuild the tokenizer and the tiny GPT-2 checkpoints in data/tiny/ from the world.

    python -m tools.build_checkpoints --out data     (or: make checkpoints)

1. Train a byte-level BPE tokenizer (``tokenizers``) on world text.
2. Pretrain a GPT-2-architecture model (``transformers``) on the world corpus: prompts with
   responses of every quality, plus side-skill facts. -> data/tiny/base
3. Supervised-finetune it on demonstrations with a response-only loss.   -> data/tiny/sft
4. Measure what later lessons need (well-formed samples, gold reward of base vs SFT, spread
   of gold among samples for one prompt) and write the data card data/tiny/CARD.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from preflab.pretrain import PretrainConfig, train_lm
from preflab.sft import SFTConfig, train_sft
from preflab.world import PROMPT_TEMPLATE, make_world

TINY_CONFIG = dict(n_positions=128, n_embd=128, n_layer=4, n_head=4, n_inner=512,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
VOCAB_SIZE = 768
EOS = "<|endoftext|>"
PAD = "<|pad|>"
HPARAMS = dict(world_seed=0, seed=0, corpus_size=40_000, pretrain_steps=1000, pretrain_batch=64,
               pretrain_lr=3e-3, sft_size=8_000, sft_steps=400, sft_batch=64, sft_lr=1e-3)


def train_tokenizer(texts: list[str], out_dir: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[EOS, PAD])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                  unk_token=EOS, model_max_length=TINY_CONFIG["n_positions"])
    tok.padding_side = "right"
    return tok


def evaluate(model, tok, world, n_prompts: int = 96, per_prompt: int = 4, seed: int = 123) -> dict:
    """Quality numbers for the data card: parse rate, gold reward, spread within a prompt."""
    from preflab.model import DecodingConfig, generate
    from preflab.world import parse_response

    prompts = world.sample_prompts(n_prompts, rng=seed)
    reps = [p for p in prompts for _ in range(per_prompt)]
    texts = generate(model, tok, reps, DecodingConfig(max_new_tokens=64), seed=seed)
    gold = np.array([world.gold_reward(p, t) for p, t in zip(reps, texts)])
    well_formed = np.array([parse_response(t).garbled == 0 and len(t) > 0 for t in texts])
    within_sd = gold.reshape(n_prompts, per_prompt).std(axis=1)
    arith = [(p, t) for p, t in zip(reps, texts) if world.kind(p) == "arith"]
    by_kind = {}
    for k in sorted({world.kind(p) for p in reps}):
        sel = [i for i, p in enumerate(reps) if world.kind(p) == k]
        by_kind[k] = round(float(gold[sel].mean()), 3)
    return {
        "samples": len(texts),
        "well_formed_rate": round(float(well_formed.mean()), 3),
        "gold_mean": round(float(gold.mean()), 3),
        "gold_mean_by_kind": by_kind,
        "gold_sd_within_prompt": round(float(within_sd.mean()), 3),
        "arith_accuracy": round(float(np.mean([world.is_correct_arith(p, t) for p, t in arith])), 3) if arith else None,
        "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 2),
        "example": {"prompt": reps[0], "response": texts[0]},
    }


def portable_tokenizer_config(d: Path) -> None:
    """Name the tokenizer class both transformers 4.x and 5.x know. transformers 5 saves
    ``"tokenizer_class": "TokenizersBackend"``, which 4.x cannot load; ``PreTrainedTokenizerFast``
    loads the same tokenizer.json on both (5.x maps it onto its TokenizersBackend)."""
    p = d / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg.pop("backend", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, hp: dict = HPARAMS) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    t0 = time.time()
    torch.manual_seed(hp["seed"])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world = make_world(hp["world_seed"])
    corpus = world.corpus(hp["corpus_size"], rng=hp["seed"])
    demos = world.demonstrations(hp["sft_size"], rng=hp["seed"] + 1)
    tok = train_tokenizer(corpus + [world.format_prompt(p) + " " + r for p, r in demos[:2000]], out)
    cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, **TINY_CONFIG)
    model = GPT2LMHeadModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny GPT-2: {n_params / 1e6:.2f} M parameters, vocab {len(tok)}", file=sys.stderr)
    pre_history = train_lm(model, tok, corpus, PretrainConfig(steps=hp["pretrain_steps"], batch_size=hp["pretrain_batch"],
                                                            lr=hp["pretrain_lr"], seed=hp["seed"]))
    pre_losses = [h["loss"] for h in pre_history]
    card = {"world_seed": hp["world_seed"], "data_version": world.version_hash, "prompt_template": PROMPT_TEMPLATE,
            "parameters": n_params, "config": TINY_CONFIG, "vocab_size": len(tok), "hyperparameters": hp,
            "command": "make checkpoints   (python -m tools.build_checkpoints --out data)",
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "stages": {}}
    t_pre = time.time()
    for stage, train_losses in (("base", pre_losses), ("sft", None)):
        if stage == "sft":
            history = train_sft(model, tok, demos, SFTConfig(steps=hp["sft_steps"], batch_size=hp["sft_batch"],
                                                             lr=hp["sft_lr"], seed=hp["seed"]))
            train_losses = [h["loss"] for h in history]
        d = out / "tiny" / stage
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d), safe_serialization=True)
        tok.save_pretrained(str(d))
        portable_tokenizer_config(d)
        metrics = evaluate(model, tok, world)
        card["stages"][stage] = {
            "final_train_loss": round(float(np.mean(train_losses[-50:])), 4),
            "metrics": metrics,
            "files": {f.name: _sha256(f) for f in sorted(d.iterdir()) if f.is_file()},
        }
        print(stage, json.dumps(metrics), file=sys.stderr)
    card["build_seconds"] = round(time.time() - t0, 1)
    card["pretrain_seconds"] = round(t_pre - t0, 1)
    card["built"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "tiny" / "CARD.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data", type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny step counts, for a smoke test only")
    args = ap.parse_args(argv)
    hp = dict(HPARAMS)
    if args.quick:
        hp.update(corpus_size=500, pretrain_steps=5, sft_size=100, sft_steps=3)
    card = build(args.out, hp)
    print(json.dumps({k: card[k] for k in ("parameters", "build_seconds")}))


if __name__ == "__main__":
    main()
