"""Model utilities: loading, masks, response-only log-probs, sampling, manifests, error messages."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from preflab.model import (Batch, DecodingConfig, RunManifest, encode, generate, load_policy, make_manifest,
                           model_version, sequence_logprobs, trim_padding)
from preflab.world import PROMPT_TEMPLATE, make_world


def test_tiny_loads_offline(policy):
    model, tok = policy
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 5e6
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert not model.training


def test_card_matches_files():
    import hashlib
    from preflab.model import TINY_DIR
    card = json.loads((TINY_DIR / "CARD.json").read_text())
    for stage, info in card["stages"].items():
        for name, sha in info["files"].items():
            assert hashlib.sha256((TINY_DIR / stage / name).read_bytes()).hexdigest() == sha, (stage, name)
    assert card["data_version"] == make_world(card["world_seed"]).version_hash


def test_response_mask_covers_response_and_eos_only(policy):
    _, tok = policy
    b = encode(tok, ["how do i make tea?"], ["boil the water."])
    prompt_ids = tok(PROMPT_TEMPLATE.format(prompt="how do i make tea?"), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert b.response_mask[0, :n].sum() == 0
    assert b.response_mask[0, n:].all()
    assert b.input_ids[0, -1] == tok.eos_token_id
    assert tok.decode(b.input_ids[0, n:-1]).strip() == "boil the water."


def _naive_logprob(model, tok, prompt, response, average=False):
    """Independent computation: one example, no padding, log_softmax picked by hand."""
    p_ids = tok(PROMPT_TEMPLATE.format(prompt=prompt), add_special_tokens=False)["input_ids"]
    r_ids = tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logits = model(ids).logits[0]
    logp = F.log_softmax(logits.double(), -1)
    terms = [logp[len(p_ids) + j - 1, t].item() for j, t in enumerate(r_ids)]
    return sum(terms) / (len(terms) if average else 1)


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_equal_naive_loop(policy, world, average):
    model, tok = policy
    prompts = world.sample_prompts(6, rng=0)
    responses = [world.sample_response(p, 1) for p in prompts]
    b = encode(tok, prompts, responses)
    assert (b.attention_mask == 0).any(), "the batch should need padding for this test to mean anything"
    with torch.no_grad():
        batched = sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask, average=average)
    naive = [_naive_logprob(model, tok, p, r, average) for p, r in zip(prompts, responses)]
    assert torch.allclose(batched.double(), torch.tensor(naive, dtype=torch.float64), atol=1e-4)


def test_left_padding_gives_same_logprobs(policy, world):
    model, tok = policy
    prompts = world.sample_prompts(4, rng=1)
    responses = [world.sample_response(p, 2) for p in prompts]
    b = encode(tok, prompts, responses)
    # shift every row to the right end: left padding
    L = b.attention_mask.sum(-1)
    T = b.input_ids.shape[1]
    ids, attn, resp = (torch.full_like(b.input_ids, tok.pad_token_id), torch.zeros_like(b.attention_mask),
                       torch.zeros_like(b.response_mask))
    for i in range(len(prompts)):
        n = int(L[i])
        ids[i, T - n:], attn[i, T - n:], resp[i, T - n:] = b.input_ids[i, :n], 1, b.response_mask[i, :n]
    with torch.no_grad():
        right = sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask)
        left = sequence_logprobs(model, ids, attn, resp)
    assert torch.allclose(right, left, atol=1e-4)


def test_prompt_tokens_do_not_count(policy):
    model, tok = policy
    b1 = encode(tok, ["how do i make tea?"], ["boil the water."])
    b2 = encode(tok, ["how do i make tea?"], ["boil the water."])
    b2.input_ids[0, 2] = (b2.input_ids[0, 2] + 1) % 100  # change a prompt token
    with torch.no_grad():
        lp1 = sequence_logprobs(model, b1.input_ids, b1.attention_mask, b1.response_mask)
        lp2 = sequence_logprobs(model, b2.input_ids, b2.attention_mask, b2.response_mask)
    # the response's log-prob may change (it conditions on the prompt) but its token count may not
    assert b1.response_mask.sum() == b2.response_mask.sum()
    assert lp1.shape == lp2.shape == (1,)


def test_trim_padding(policy):
    _, tok = policy
    b = encode(tok, ["how do i make tea?"] * 2, ["boil the water.", "boil."])
    wide = Batch(F.pad(b.input_ids, (0, 5), value=tok.pad_token_id), F.pad(b.attention_mask, (0, 5)),
                 F.pad(b.response_mask, (0, 5)))
    t = trim_padding(wide)
    assert t.input_ids.shape == b.input_ids.shape and torch.equal(t.input_ids, b.input_ids)


# ----------------------------------------------------------------------------- errors
def test_unknown_scale_names_choices():
    with pytest.raises(ValueError, match="tiny.*gpt2"):
        load_policy("gpt5")
    with pytest.raises(ValueError, match="stage"):
        load_policy("tiny", stage="rlhf")


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make checkpoints"):
        load_policy("tiny", path=tmp_path)


def test_gpt2_offline_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_policy("gpt2", path=tmp_path / "nowhere")


def test_mask_shape_mismatch(policy):
    model, tok = policy
    b = encode(tok, ["how do i make tea?"], ["boil the water."])
    with pytest.raises(ValueError, match="response_mask has shape"):
        sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask[:, :-1])


def test_empty_response(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="empty"):
        encode(tok, ["how do i make tea?"], ["   "])
    b = encode(tok, ["how do i make tea?"], ["boil."])
    with pytest.raises(ValueError, match="empty response"):
        sequence_logprobs(model, b.input_ids, b.attention_mask, torch.zeros_like(b.response_mask))


def test_prompt_longer_than_context(policy):
    model, tok = policy
    long = "how do i make tea? " * 200
    with pytest.raises(ValueError, match="context"):
        encode(tok, [long], ["boil."])
    with pytest.raises(ValueError, match="context"):
        generate(model, tok, [long], DecodingConfig(max_new_tokens=8))


# ----------------------------------------------------------------------------- sampling and manifests
def test_generate_is_seeded_and_batched_like_single(policy, world):
    model, tok = policy
    prompts = world.sample_prompts(5, rng=3)
    a = generate(model, tok, prompts, DecodingConfig(max_new_tokens=24), seed=7)
    b = generate(model, tok, prompts, DecodingConfig(max_new_tokens=24), seed=7)
    assert a == b
    greedy = DecodingConfig(max_new_tokens=24, do_sample=False)
    batched, bids = generate(model, tok, prompts, greedy, return_ids=True)
    for i, p in enumerate(prompts):
        single, sids = generate(model, tok, [p], greedy, return_ids=True)
        if single[0] == batched[i]:
            continue
        # Left padding changes the float reductions, so greedy decoding may part ways only
        # where two tokens are tied to float noise: find the first differing token and
        # check that its logit gap is that small.
        a = bids.input_ids[i][bids.attention_mask[i].bool()].tolist()
        b = sids.input_ids[0][sids.attention_mask[0].bool()].tolist()
        k = next(j for j in range(min(len(a), len(b))) if a[j] != b[j])
        with torch.no_grad():
            logits = model(torch.tensor([b[:k]])).logits[0, -1]
        gap = abs(float(logits[a[k]] - logits[b[k]]))
        assert gap < 1e-3, (p, batched[i], single[0], gap)


def test_generate_return_ids_scores_what_was_sampled(policy, world):
    model, tok = policy
    prompts = world.sample_prompts(4, rng=4)
    texts, batch = generate(model, tok, prompts, DecodingConfig(max_new_tokens=24), seed=1, return_ids=True)
    with torch.no_grad():
        lp = sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    assert torch.isfinite(lp).all() and (lp < 0).all()


def test_manifest_round_trip(policy, world, tmp_path):
    model, _ = policy
    m = make_manifest("unit-test", world, model, DecodingConfig(temperature=0.7), seed=3, lr=1e-3)
    path = m.write(tmp_path / "run" / "manifest.json")
    back = RunManifest.read(path)
    assert back == m
    assert back.data_version == world.version_hash and back.policy_version == model_version(model)
    assert back.decoding["temperature"] == 0.7 and back.prompt_template == PROMPT_TEMPLATE
    assert back.hyperparameters == {"lr": 1e-3}


def test_gpt2_scale_loads_from_local_directory(tmp_path, policy):
    """The gpt2 path is real transformers loading code; here it reads a locally saved GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel
    _, tok = policy
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_policy("gpt2", stage="base", path=tmp_path, device="cpu")
    assert model.config.n_embd == 32 and tok2.pad_token_id is not None
    assert model.config.resid_pdrop == 0.0, "dropout is off at GPT-2 scale too"


def test_gpt2_base_and_sft_are_built_once_and_cached(tmp_path, policy, monkeypatch):
    """At GPT-2 scale "base" is GPT-2 adapted to the world's text and "sft" that base finetuned on the
    demonstrations, as at the tiny scale: each built on first use, then read from the cache; dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from preflab.model import gpt2_checkpoint_dir, load_gpt2_base, load_gpt2_sft
    _, tok = policy
    raw = tmp_path / "gpt2-local"
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)  # dropout 0.1, GPT-2's default
    GPT2LMHeadModel(cfg).save_pretrained(raw)
    tok.save_pretrained(raw)
    monkeypatch.setenv("PREFLAB_GPT2_PATH", str(raw))
    cache = tmp_path / "cache"
    base_hp, sft_hp = dict(steps=2, corpus_size=20, batch_size=4), dict(steps=3, n_demos=20, batch_size=4)
    b1, _ = load_gpt2_base(cache_dir=cache, device="cpu", **base_hp)
    assert sorted(p.name for p in cache.iterdir()) == [gpt2_checkpoint_dir("base", cache, **base_hp).name]
    m1, _ = load_gpt2_sft(cache_dir=cache, device="cpu", base=base_hp, **sft_hp)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [gpt2_checkpoint_dir("base", cache, **base_hp).name, gpt2_checkpoint_dir("sft", cache, base=base_hp, **sft_hp).name])
    m2, _ = load_gpt2_sft(cache_dir=cache, device="cpu", base=base_hp, **sft_hp)
    assert model_version(m1) == model_version(m2)
    versions = {model_version(GPT2LMHeadModel.from_pretrained(raw)), model_version(b1), model_version(m1)}
    assert len(versions) == 3, "raw GPT-2, the world base and the SFT policy are three different models"
    for m in (b1, m1):
        assert m.config.resid_pdrop == m.config.embd_pdrop == m.config.attn_pdrop == 0.0
        assert all(d.p == 0.0 for d in m.modules() if isinstance(d, torch.nn.Dropout))
    # a changed recipe, or another GPT-2 to start from, is a different checkpoint
    here = gpt2_checkpoint_dir("sft", cache, base=base_hp, **sft_hp)
    assert here != gpt2_checkpoint_dir("sft", cache, **sft_hp)
    monkeypatch.setenv("PREFLAB_GPT2_PATH", str(tmp_path / "another-gpt2"))
    assert gpt2_checkpoint_dir("sft", cache, base=base_hp, **sft_hp) != here
