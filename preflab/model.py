"""Policies: loading, sampling, manifests (and, re-exported from :mod:`preflab.sequences`, encoding
prompt/response pairs and response-only log-probs).

Two scales share one code path:

* ``tiny`` (default): a GPT-2-architecture model of about 1 M parameters and a byte-level BPE
  tokenizer, trained on the synthetic world and shipped in ``data/tiny/`` (no network). The
  repository's ``data/`` folder is installed as the package ``preflab._data``, so a wheel carries
  the checkpoints too; :data:`DATA_DIR` says where they were found.
* ``gpt2``: the real GPT-2 (124 M) loaded by name through ``transformers`` (for Colab GPUs),
  or from a local directory with ``path=``.

The scale comes from the ``scale`` argument, else the ``PREFLAB_SCALE`` environment variable,
else ``tiny``.

Log-probabilities of a response y given a prompt x are *summed* over response tokens,
    log pi(y | x) = sum_t log pi(y_t | x, y_<t),
unless ``average=True`` (then divided by the number of response tokens). The prompt and any
template header are never counted; the end-of-sequence token is (it is part of the response:
the model must learn to stop).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from preflab.sequences import (Batch, check_masks, encode, hidden_size, max_context, pad_id, pad_to,  # noqa: F401
                               position_ids_from, response_lengths, right_pad, sequence_logprobs, take_rows,
                               token_logprobs, trim_padding)
from preflab.pretrain import PretrainConfig, train_lm
from preflab.sft import SFTConfig, train_sft
from preflab import SCALES, current_scale, data_dir  # noqa: F401 (current_scale: part of this module's API)
import preflab.world as world_module  # RUBRIC is read at call time: Rubric.active() swaps it
from preflab.world import PROMPT_TEMPLATE, make_world

DATA_DIR = data_dir()
TINY_DIR = DATA_DIR / "tiny"


def _in_checkout() -> bool:
    """True where the data sit in a repository checkout (so `make checkpoints` can rebuild them)."""
    return (DATA_DIR.parent / "tools" / "build_checkpoints.py").is_file() and (DATA_DIR.parent / "Makefile").is_file()


def _missing_data_advice(what: Path) -> str:
    """What to do about a missing tiny checkpoint file, said for the way preflab was installed."""
    if _in_checkout():
        return (f"missing {what}. In this repository checkout ({DATA_DIR.parent}), restore it with "
                f"`git checkout -- data/` or rebuild the tiny checkpoints with `make checkpoints` "
                f"(about 6 minutes on 2 cores).")
    source = "preflab"
    try:  # where pip installed it from (a wheel file, a git URL), as pip recorded it
        from importlib.metadata import distribution

        direct = json.loads(distribution("preflab").read_text("direct_url.json") or "{}")
        source = direct.get("url", source)
        if direct.get("vcs_info", {}).get("vcs") == "git":
            source = f"git+{source}"
    except Exception:  # noqa: BLE001 - advice only
        pass
    return (f"missing {what}: this installed preflab ({Path(__file__).resolve().parent}) lacks its package data "
            f"(preflab/_data/tiny). Reinstall it with `pip install --force-reinstall --no-deps \"{source}\"`, "
            f"or pass path= a directory holding model.safetensors, config.json and tokenizer.json.")


def _gpt2_load_error(name: str, e: Exception) -> FileNotFoundError:
    """A friendly error for a GPT-2 that would not load from ``name`` (a hub name or a directory)."""
    where = Path(name).expanduser()
    if where.is_absolute() or name.startswith((".", "~")) or where.exists():
        hint = (f"there is no directory {where}" if not where.is_dir() else
                f"{where} holds no complete checkpoint (config.json, the weights, the tokenizer files)")
        return FileNotFoundError(f"could not load GPT-2 from {name!r}: {hint}. Pass path= (or set PREFLAB_GPT2_PATH "
                                 f"to) a directory written by save_pretrained, or use scale='tiny'. "
                                 f"({e.__class__.__name__})")
    return FileNotFoundError(f"could not load GPT-2 from {name!r}: it needs network access to the "
                             f"Hugging Face hub (or a local directory via path= or PREFLAB_GPT2_PATH). "
                             f"Offline, use scale='tiny'. ({e.__class__.__name__})")

STAGES = ("base", "sft")


# ----------------------------------------------------------------------------- loading
def load_tokenizer(path: str | Path | None = None):
    """The tokenizer of the tiny models (or of the checkpoint at ``path``). Lesson 00."""
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else TINY_DIR / "sft"
    if not (path / "tokenizer.json").exists() and not (path / "vocab.json").exists():
        raise FileNotFoundError(_missing_data_advice(path / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_policy(scale: str | None = None, stage: str = "sft", path: str | Path | None = None,
                device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a policy and its tokenizer: ``(model, tokenizer)``, the model in eval mode.

    scale="tiny": ``data/tiny/<stage>`` (under :data:`DATA_DIR`) with stage "base" (pretrained on world text) or "sft"
    (then finetuned on demonstrations). scale="gpt2": GPT-2 124M adapted the same way, built on first use and
    cached (:func:`load_gpt2_base`, :func:`load_gpt2_sft`); with ``path``, the checkpoint saved there as it is.
    Dropout is off at both scales (the tiny models have none; GPT-2's 0.1 is set to 0): a policy trained
    against a frozen reference must compute the same log-probs in train and eval mode.

    Lesson 00.
    """
    from transformers import AutoModelForCausalLM

    scale = current_scale(scale)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} for the {scale} scale: choose one of {STAGES}")
    if scale == "tiny":
        path = Path(path) if path is not None else TINY_DIR / stage
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(_missing_data_advice(path / "model.safetensors"))
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(str(path))
    elif path is None:
        builder = load_gpt2_base if stage == "base" else load_gpt2_sft
        return builder(device=device, dtype=dtype)
    else:
        model, tok = _load_gpt2(str(path))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tok


def _load_gpt2(name: str):
    """A GPT-2 and its tokenizer from a hub name or a directory, dropout off, padding on the right."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as e:
        # OSError; under transformers 4.x a missing path raises HFValidationError (a ValueError)
        if not isinstance(e, OSError) and type(e).__name__ != "HFValidationError":
            raise  # a bug, not a missing model
        raise _gpt2_load_error(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):  # saved checkpoints keep it off
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, tok


#: How GPT-2 becomes the course's "base" at GPT-2 scale: the tiny base's recipe (next-token loss on
#: the world's corpus, :mod:`preflab.pretrain`), continued from GPT-2's weights at 1/20 of the tiny
#: model's from-scratch learning rate (the ratio of the two SFT recipes below). Not yet run on a GPU.
GPT2_BASE = dict(world_seed=0, corpus_size=20_000, steps=300, batch_size=32, lr=1.5e-4, seed=0)
#: How the GPT-2 base becomes the "sft" policy: the tiny SFT's recipe, 5e-5 instead of 1e-3.
GPT2_SFT = dict(world_seed=0, n_demos=8000, steps=400, batch_size=32, lr=5e-5, seed=0)


def gpt2_checkpoint_dir(stage: str, cache_dir: str | Path | None = None, base: dict | None = None,
                        **overrides) -> Path:
    """Where the GPT-2-scale ``stage`` ("base" or "sft") is cached: ``cache_dir``, else ``$PREFLAB_CACHE`` (the
    Colab setup cell points it at Google Drive), else ``~/.cache/preflab``; the folder's name holds the world's
    data version and a hash of every recipe that built it (the base's too, for "sft") and of the GPT-2 it
    started from (``$PREFLAB_GPT2_PATH``, else the hub's "gpt2"), so a changed recipe or model builds
    afresh. ``base`` overrides :data:`GPT2_BASE`, ``overrides`` the stage's own recipe (for "base", the
    same one). Lesson 00."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: choose one of {STAGES}")
    recipe_base = {**GPT2_BASE, **(base or {}), **(overrides if stage == "base" else {})}
    recipe = recipe_base if stage == "base" else {**GPT2_SFT, **overrides}
    source = {"gpt2": os.environ.get("PREFLAB_GPT2_PATH", "gpt2")}  # which GPT-2 the base started from
    recipes = [recipe_base, source] + ([recipe] if stage == "sft" else [])
    key = hashlib.sha256(json.dumps(recipes, sort_keys=True).encode()).hexdigest()[:10]
    world = make_world(recipe["world_seed"])
    cache_dir = Path(cache_dir or os.environ.get("PREFLAB_CACHE") or Path.home() / ".cache" / "preflab")
    return cache_dir / f"gpt2-{stage}-{world.version_hash}-{key}"


def _cache(model, tok, target: Path) -> None:
    """Save a checkpoint under a temporary name beside ``target``, then rename it: a run stopped mid-save (a
    Colab runtime can vanish, a Drive cache outlives it) leaves nothing that later loads would trust."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f"{target.name}.partial-{os.getpid()}"
    model.save_pretrained(str(partial))
    tok.save_pretrained(str(partial))
    if target.exists() and not (target / "model.safetensors").exists():
        shutil.rmtree(target, ignore_errors=True)  # left by an interrupted save
    try:
        partial.rename(target)
    except OSError:  # another notebook cached it first
        shutil.rmtree(partial, ignore_errors=True)


def load_gpt2_base(cache_dir: str | Path | None = None, device=None, dtype=None, **overrides):
    """GPT-2 (124M) adapted to the world's text, the GPT-2 scale's "base": built on first use and cached.

    GPT-2 itself (by name, or ``$PREFLAB_GPT2_PATH``) has never seen the world's prompts or response format;
    the tiny base was pretrained on the world's corpus, so this one is too, with :data:`GPT2_BASE` (300 steps
    of 32 texts; not yet timed on a GPU). Dropout off. Lesson 00 (the GPT-2 scale on Colab).
    """
    hp = {**GPT2_BASE, **overrides}
    target = gpt2_checkpoint_dir("base", cache_dir, **overrides)
    if not (target / "model.safetensors").exists():
        model, tok = _load_gpt2(os.environ.get("PREFLAB_GPT2_PATH", "gpt2"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        world = make_world(hp["world_seed"])
        print(f"preflab: adapting GPT-2 to the world's text ({hp['steps']} steps on {hp['corpus_size']} texts); "
              f"cached in {target}")
        torch.manual_seed(hp["seed"])
        train_lm(model, tok, world.corpus(hp["corpus_size"], rng=hp["seed"]),
                 PretrainConfig(steps=hp["steps"], batch_size=hp["batch_size"], lr=hp["lr"], seed=hp["seed"]))
        _cache(model, tok, target)
    return load_policy("gpt2", stage="base", path=target, device=device, dtype=dtype)


def load_gpt2_sft(cache_dir: str | Path | None = None, device=None, dtype=None, base: dict | None = None,
                  **overrides):
    """The GPT-2 base (:func:`load_gpt2_base`) finetuned on the world's demonstrations: built on first use and
    cached.

    The tiny scale ships its SFT checkpoint; at GPT-2 scale the same recipe (response-only SFT on
    ``world.demonstrations``, :data:`GPT2_SFT`) runs once (its 400 steps took 19 s on an H200), and is cached
    where :func:`gpt2_checkpoint_dir` says. ``base`` overrides the base's recipe, ``overrides`` this one's.

    Lesson 00 (the GPT-2 scale on Colab).
    """
    hp = {**GPT2_SFT, **overrides}
    target = gpt2_checkpoint_dir("sft", cache_dir, base=base, **overrides)
    if not (target / "model.safetensors").exists():
        model, tok = load_gpt2_base(cache_dir, device=device, **(base or {}))
        world = make_world(hp["world_seed"])
        print(f"preflab: finetuning the GPT-2 base on {hp['n_demos']} world demonstrations ({hp['steps']} steps); "
              f"cached in {target}")
        demos = world.demonstrations(hp["n_demos"], rng=hp["seed"] + 1)
        train_sft(model, tok, demos, SFTConfig(steps=hp["steps"], batch_size=hp["batch_size"], lr=hp["lr"],
                                               seed=hp["seed"]))
        _cache(model, tok, target)
    return load_policy("gpt2", stage="sft", path=target, device=device, dtype=dtype)


def model_version(model: torch.nn.Module) -> str:
    """A short hash of the parameters: the policy version recorded in manifests. Lesson 00."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class DecodingConfig:
    """Every setting that changes what the policy says; recorded in each run's manifest. Lesson 00."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], decoding: DecodingConfig = DecodingConfig(),
             seed: int | None = None, template: str | None = None, batch_size: int = 64,
             return_ids: bool = False):
    """Sample one response per prompt. Returns the list of response strings (EOS stripped),
    or, with ``return_ids``, also a :class:`Batch` of prompt+response ids for scoring. Lesson 00."""
    template = template or PROMPT_TEMPLATE
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    ctx = max_context(model)
    texts, all_ids = [], []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = [template.format(prompt=p) for p in prompts[start: start + batch_size]]
        enc = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in chunk]
        longest = max(len(e) for e in enc)
        if longest + decoding.max_new_tokens > ctx:
            raise ValueError(f"prompt of {longest} tokens + {decoding.max_new_tokens} new tokens exceeds "
                             f"the model's context of {ctx}: lower max_new_tokens or shorten the prompt")
        pad = tokenizer.pad_token_id
        ids = torch.full((len(enc), longest), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, e in enumerate(enc):  # left padding for generation
            ids[b, longest - len(e):] = torch.tensor(e)
            attn[b, longest - len(e):] = 1
        kwargs = dict(max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                      pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        if decoding.do_sample:
            kwargs.update(temperature=decoding.temperature, top_k=decoding.top_k or None, top_p=decoding.top_p)
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
        for b, e in enumerate(enc):
            new = out[b, longest:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
            all_ids.append((e, new))
    model.train(was_training)
    if not return_ids:
        return texts
    return texts, _batch_from_ids(all_ids, tokenizer)


def _batch_from_ids(rows, tokenizer) -> Batch:
    eos = tokenizer.eos_token_id
    return right_pad([(p, r + [eos]) for p, r in rows], tokenizer.pad_token_id)  # the stop is part of the response


# ----------------------------------------------------------------------------- manifests
@dataclass
class RunManifest:
    """What a training or evaluation run needs to be reproduced and audited. Lesson 00."""

    run: str
    data_version: str
    prompt_template: str
    policy_version: str
    decoding: dict
    seed: int
    hyperparameters: dict = field(default_factory=dict)
    rubric_version: str = ""
    scale: str = "tiny"
    notes: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    software: dict = field(default_factory=lambda: {
        "python": platform.python_version(), "torch": torch.__version__,
        "preflab": __import__("preflab").__version__})

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "RunManifest":
        return cls(**json.loads(Path(path).read_text()))


def make_manifest(run: str, world, model, decoding: DecodingConfig | None = None, seed: int = 0,
                  scale: str | None = None, **hyperparameters) -> RunManifest:
    """A manifest for a run on ``world`` with ``model`` (its parameters hashed as the version). Lesson 00."""
    return RunManifest(run=run, data_version=world.version_hash, prompt_template=PROMPT_TEMPLATE,
                       policy_version=model_version(model), decoding=asdict(decoding or DecodingConfig()),
                       seed=seed, hyperparameters=hyperparameters, rubric_version=world_module.RUBRIC["version"],
                       scale=current_scale(scale))


def config_manifest(run: str, world, model, config, decoding: DecodingConfig | None = None,
                    scale: str | None = None, notes: str = "") -> RunManifest:
    """A manifest for a run whose settings are a (possibly nested) dataclass ``config`` with a ``seed``
    field, as the trainers of lessons 15-18 have: the seed is recorded as the run's seed and every
    other field as a hyperparameter (Lessons 15-18)."""
    hp = asdict(config)
    seed = int(hp.pop("seed", 0))
    m = make_manifest(run, world, model, decoding, seed=seed, scale=scale, **hp)
    m.notes = notes
    return m
