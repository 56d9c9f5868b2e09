"""Reward model: pooling at the last real token (right and left padding), the pair loss,
one-pass training, scoring, accuracy with ties, calibration and the RewardBench subsets."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from preflab.model import encode
from preflab.pairs import drop_empty
from preflab.reward_model import (RewardModel, load_reward_model, pairwise_accuracy, pool_index, reliability,
                                  reward_pair_loss, rewardbench_subsets, score, score_pairs, train_reward_model,
                                  RewardConfig)


@pytest.fixture(scope="module")
def rm_tok():
    return load_reward_model("tiny", seed=0, device="cpu")


PROMPTS = ["how do i make tea?", "what is 2 plus 3?", "how do i kill my neighbor?"]
RESPONSES = ["first boil the water. then put a tea bag in a cup. next pour the water. finally wait three minutes.",
             "2 plus 3 is 5.", "sorry, i can not help with that."]


def _left_pad(ids, attn, pad_id):
    """Move each right-padded row's real tokens to the right end."""
    out_ids, out_attn = torch.full_like(ids, pad_id), torch.zeros_like(attn)
    for b in range(ids.shape[0]):
        n = int(attn[b].sum())
        out_ids[b, ids.shape[1] - n:] = ids[b, :n]
        out_attn[b, ids.shape[1] - n:] = 1
    return out_ids, out_attn


def test_pool_index_finds_last_real_token_for_both_paddings():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert pool_index(right).tolist() == [2, 4, 0]
    assert pool_index(left).tolist() == [4, 4, 4]
    assert pool_index(right, "first").tolist() == [0, 0, 0]
    assert pool_index(right, "final_column").tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="all zeros"):
        pool_index(torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_index(right, "mean")


def test_reward_is_the_same_with_right_padding_left_padding_and_alone(rm_tok):
    rm, tok = rm_tok
    b = encode(tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        right = rm(b.input_ids, b.attention_mask)
        lids, lattn = _left_pad(b.input_ids, b.attention_mask, tok.pad_token_id)
        left = rm(lids, lattn)
        alone = torch.stack([rm(encode(tok, [p], [r]).input_ids, encode(tok, [p], [r]).attention_mask)[0]
                             for p, r in zip(PROMPTS, RESPONSES)])
    assert right.shape == (3,)
    torch.testing.assert_close(right, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-4, rtol=1e-4)


def test_wrong_pooling_cannot_see_the_response(rm_tok):
    rm, tok = rm_tok
    b = encode(tok, [PROMPTS[0]] * 2, [RESPONSES[0], "sorry, i can not help with that."])
    rm.pooling = "first"
    try:
        with torch.no_grad():
            r = rm(b.input_ids, b.attention_mask)
        # Same prompt start: the reward ignores the response. The two rows are computed in
        # different rows of one batch, so they agree to float noise, not bit for bit.
        torch.testing.assert_close(r[0], r[1], rtol=1e-5, atol=1e-5)
        rm.pooling = "last"
        with torch.no_grad():
            r_last = rm(b.input_ids, b.attention_mask)
        assert abs(float(r_last[0] - r_last[1])) > 1e-3  # the right pooling does see the response
    finally:
        rm.pooling = "last"


def test_pair_loss_matches_trl_formula_and_is_finite():
    rc = torch.tensor([2.0, -1.0, 300.0, -300.0])
    rr = torch.tensor([1.0, 1.0, -300.0, 300.0])
    loss = reward_pair_loss(rc, rr)
    torch.testing.assert_close(loss, -F.logsigmoid(rc - rr))
    assert torch.isfinite(loss).all() and loss[2] < 1e-6 and abs(loss[3] - 600.0) < 1e-3
    m = torch.tensor([0.5, 0.5, 0.5, 0.5])
    torch.testing.assert_close(reward_pair_loss(rc, rr, m), -F.logsigmoid(rc - rr - m))
    c = reward_pair_loss(rc[:2], rr[:2], center_coef=0.01)
    torch.testing.assert_close(c, -F.logsigmoid(rc[:2] - rr[:2]) + 0.01 * (rc[:2] + rr[:2]) ** 2)
    assert math.isclose(float(reward_pair_loss(torch.zeros(1), torch.zeros(1))), math.log(2), rel_tol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        reward_pair_loss(torch.zeros(2), torch.zeros(3))


def test_training_learns_easy_pairs_and_history_is_complete(world):
    rm, tok = load_reward_model("tiny", seed=1, device="cpu")
    rng = np.random.default_rng(0)
    suite = rewardbench_subsets(world, n=24, rng=rng)
    train = suite["refusal vs compliance"][:16] + suite["answer vs over-refusal"][:16]
    test = suite["refusal vs compliance"][16:] + suite["answer vs over-refusal"][16:]
    before = score_pairs(rm, tok, train)
    hist = train_reward_model(rm, tok, train, RewardConfig(epochs=3, batch_size=16, lr=2e-3, seed=0, progress=False),
                              eval_records=test)
    assert len(hist) == 6
    for key in ("step", "epoch", "loss", "accuracy", "margin", "lr"):
        assert key in hist[0]
    assert "eval_accuracy" in hist[1] and "eval_accuracy" not in hist[0]
    assert hist[-1]["loss"] < hist[0]["loss"]
    after = score_pairs(rm, tok, train)
    assert (after[0] - after[1]).mean() > (before[0] - before[1]).mean() + 0.5
    assert pairwise_accuracy(rm, tok, test) >= 0.8
    assert not rm.training


def test_eval_every_adds_evaluations_inside_an_epoch(world):
    rm, tok = load_reward_model("tiny", seed=0, device="cpu")
    recs = drop_empty(world.preference_pairs(40, rng=3))
    hist = train_reward_model(rm, tok, recs[:32], RewardConfig(epochs=1, batch_size=4, seed=0, eval_every=3,
                                                                progress=False), eval_records=recs[32:])
    assert [h["step"] for h in hist if "eval_accuracy" in h] == [2, 5, 7]   # every 3 steps, and at the epoch's end
    with pytest.raises(ValueError, match="eval_every"):
        RewardConfig(eval_every=0)


def test_one_forward_pass_per_step(world):
    rm, tok = load_reward_model("tiny", seed=0, device="cpu")
    calls = []
    h = rm.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    recs = drop_empty(world.preference_pairs(8, rng=0))
    train_reward_model(rm, tok, recs, RewardConfig(epochs=1, batch_size=len(recs), progress=False))
    h.remove()
    assert len(calls) == 1


def test_score_and_accuracy_ties_count_half(rm_tok):
    rm, tok = rm_tok
    s = score(rm, tok, PROMPTS, RESPONSES, batch_size=2)
    assert s.shape == (3,) and np.isfinite(s).all()
    same = [{"prompt": PROMPTS[0], "chosen": RESPONSES[0], "rejected": RESPONSES[0]}]
    assert pairwise_accuracy(rm, tok, same) == 0.5
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy(rm, tok, [{"prompt": PROMPTS[0], "chosen": "", "rejected": "x"}])
    with pytest.raises(ValueError, match="prompt, chosen, rejected"):
        score_pairs(rm, tok, [{"prompt": "x"}])


def test_reliability_ece():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 0, 1, 1])
    r = reliability(p, y, n_bins=10)
    assert math.isclose(r["ece"], 0.1, abs_tol=1e-12)
    assert r["counts"].sum() == 4
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    assert reliability(p, rng.uniform(size=20000) < p)["ece"] < 0.02  # calibrated by construction
    assert reliability(p, rng.uniform(size=20000) < 0.5)["ece"] > 0.2
    with pytest.raises(ValueError, match="sigmoid"):
        reliability([1.5], [1])


def test_rewardbench_subsets_are_ordered_by_gold(world):
    suite = rewardbench_subsets(world, n=10, rng=0)
    assert {"howto", "review", "arith", "unsafe", "benign", "refusal vs compliance", "answer vs over-refusal",
            "substance vs filler"} <= set(suite)
    for name, rows in suite.items():
        assert len(rows) == 10, name
        assert all(r["gold_chosen"] > r["gold_rejected"] for r in rows), name
    assert all(len(r["rejected"].split()) > len(r["chosen"].split()) for r in suite["substance vs filler"])


def test_load_reward_model_rejects_bad_init():
    with pytest.raises(ValueError, match="init"):
        load_reward_model("tiny", init="rl")
    with pytest.raises(ValueError, match="pooling"):
        RewardModel(torch.nn.Linear(2, 2), pooling="mean")
