"""The SFT trainer: its step-0 loss against an independent computation, the response-only mask,
the one history schema and schedule, stopping, and clear errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from preflab.schedule import lr_at
from preflab.sft import SFTConfig, train_sft
from preflab.world import PROMPT_TEMPLATE


def _naive_nll(model, tok, pairs, prompt_too: bool) -> float:
    """Mean NLL over the response tokens (EOS included) of each pair, or over every predicted
    token with ``prompt_too``, by hand: one example at a time, no padding."""
    total, count = 0.0, 0
    for prompt, response in pairs:
        p = tok(PROMPT_TEMPLATE.format(prompt=prompt), add_special_tokens=False)["input_ids"]
        r = tok(" " + response.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)
        picked = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
        keep = picked if prompt_too else picked[len(p) - 1:]
        total -= float(keep.sum())
        count += len(keep)
    return total / count


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_step0_loss_is_the_masked_mean_nll(policy, world, mask_prompt):
    model, tok = copy.deepcopy(policy[0]), policy[1]
    pairs = world.demonstrations(4, rng=0)
    # batch_size = 1 and one step: the single drawn pair is the whole batch
    cfg = SFTConfig(steps=1, batch_size=1, lr=1e-12, mask_prompt=mask_prompt, seed=3, progress=False)
    import numpy as np

    drawn = pairs[int(np.random.default_rng(3).integers(len(pairs), size=1)[0])]
    want = _naive_nll(model, tok, [drawn], prompt_too=not mask_prompt)
    hist = train_sft(model, tok, pairs, cfg)
    assert hist[0]["loss"] == pytest.approx(want, rel=1e-4)


def test_history_schedule_learning_and_stop(policy, world):
    model, tok = copy.deepcopy(policy[0]), policy[1]
    pairs = world.demonstrations(8, rng=1)
    cfg = SFTConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=5, seed=0, progress=False)
    hist = train_sft(model, tok, pairs, cfg)
    assert [h["step"] for h in hist] == list(range(30))
    for key in ("step", "lr", "loss", "grad_norm", "elapsed_s"):
        assert key in hist[0]
    assert [h["lr"] for h in hist] == [lr_at(s, 30, 3e-3, 5, decay="cosine") for s in range(30)]
    assert hist[4]["lr"] == pytest.approx(3e-3) and hist[-1]["lr"] < 1e-4  # warm-up, then cosine towards 0
    assert sum(h["loss"] for h in hist[-5:]) / 5 < hist[0]["loss"] - 0.2  # it learns the 8 pairs
    assert not model.training
    stopped = train_sft(copy.deepcopy(policy[0]), tok, pairs, SFTConfig(steps=30, progress=False),
                        callback=lambda step, m: step == 2)
    assert len(stopped) == 3


def test_prompt_tokens_change_the_loss(policy, world):
    model, tok = policy
    pairs = world.demonstrations(4, rng=2)
    a = train_sft(copy.deepcopy(model), tok, pairs, SFTConfig(steps=1, lr=1e-12, seed=1, progress=False))
    b = train_sft(copy.deepcopy(model), tok, pairs, SFTConfig(steps=1, lr=1e-12, seed=1, mask_prompt=False,
                                                              progress=False))
    assert not math.isclose(a[0]["loss"], b[0]["loss"], rel_tol=1e-3)


def test_errors_name_the_problem(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="at least one"):
        train_sft(copy.deepcopy(model), tok, [], SFTConfig(progress=False))
    with pytest.raises(ValueError, match="steps and batch_size"):
        SFTConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        SFTConfig(lr=0.0)
    with pytest.raises(ValueError, match="empty"):
        train_sft(copy.deepcopy(model), tok, [("how can i make tea?", "  ")], SFTConfig(steps=1, progress=False))
