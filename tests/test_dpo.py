"""The DPO trainer: step-0 loss against an independent computation, speed switches that change
nothing but speed, learning on separable pairs, and clear errors on bad records."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from preflab.dpo import (DPOConfig, DPOSpeed, drop_empty, encode_pairs, evaluate_pairs, implicit_reward,
                         precompute_reference_logps, train_dpo)
from preflab.losses import dpo_loss
from preflab.world import PROMPT_TEMPLATE, make_world


@pytest.fixture(scope="module")
def model_tok(policy):
    return policy


@pytest.fixture(scope="module")
def records():
    return drop_empty(make_world(0).preference_pairs(24, rng=3))


def Q(**kw) -> DPOConfig:
    """A DPOConfig without the progress bar."""
    return DPOConfig(progress=False, **kw)


def _fresh(model_tok):
    model, tok = model_tok
    return copy.deepcopy(model), copy.deepcopy(model), tok


def _naive_logp(model, tok, prompt, response):
    """One example, no padding, log-softmax picked by hand: summed response log-prob."""
    p_ids = tok(PROMPT_TEMPLATE.format(prompt=prompt), add_special_tokens=False)["input_ids"]
    r_ids = tok(" " + response.strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)
    picked = logp[torch.arange(len(p_ids) - 1, ids.shape[1] - 1), ids[0, len(p_ids):]]
    return picked.sum().item()


def test_step0_loss_equals_independent_dpo_loss(model_tok, records):
    policy, ref, tok = _fresh(model_tok)
    # perturb the policy so that the policy/reference log-ratios are not all zero
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    recs = records[:8]
    cfg = Q(beta=0.3, batch_size=len(recs), max_steps=1, lr=1e-4)
    pc = torch.tensor([_naive_logp(policy, tok, r["prompt"], r["chosen"]) for r in recs])
    pr = torch.tensor([_naive_logp(policy, tok, r["prompt"], r["rejected"]) for r in recs])
    rc = torch.tensor([_naive_logp(ref, tok, r["prompt"], r["chosen"]) for r in recs])
    rr = torch.tensor([_naive_logp(ref, tok, r["prompt"], r["rejected"]) for r in recs])
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, 0.3)
    hist = train_dpo(policy, ref, tok, recs, cfg)
    assert hist[0]["loss"] == pytest.approx(losses.mean().item(), abs=1e-5)
    assert hist[0]["logps/chosen"] == pytest.approx(pc.mean().item(), abs=1e-4)
    assert hist[0]["rewards/margins"] == pytest.approx((cr - rj).mean().item(), abs=1e-5)


def test_sft_weight_adds_the_per_token_nll_of_the_chosen_response(model_tok, records):
    """RPO / TRL's rpo_alpha: loss = DPO loss + w * mean_i(-log pi(y_c|x) / |y_c|), checked by hand."""
    policy, ref, tok = _fresh(model_tok)
    recs = records[:6]
    pc = torch.tensor([_naive_logp(policy, tok, r["prompt"], r["chosen"]) for r in recs])
    n_tok = torch.tensor([len(tok(" " + r["chosen"].strip(), add_special_tokens=False)["input_ids"]) + 1
                          for r in recs], dtype=torch.float)            # response tokens + EOS
    hist = train_dpo(policy, ref, tok, recs, Q(beta=0.1, batch_size=len(recs), max_steps=1, sft_weight=0.5))
    # the policy equals the reference at step 0, so the DPO part is exactly log 2
    assert hist[0]["loss"] == pytest.approx(math.log(2) + 0.5 * (-pc / n_tok).mean().item(), abs=1e-4)
    with pytest.raises(ValueError, match="sft_weight"):
        Q(sft_weight=-1.0)


def test_unchanged_policy_starts_at_log2(model_tok, records):
    policy, ref, tok = _fresh(model_tok)
    hist = train_dpo(policy, ref, tok, records[:8], Q(batch_size=8, max_steps=1))
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert hist[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected"):
        assert key in hist[0]


def _loss_and_grads(model_tok, recs, **switches):
    policy, ref, tok = _fresh(model_tok)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    grads = {}

    # lr tiny and one step: read the gradients after the step through a hook on the optimizer input
    cfg = Q(beta=0.2, batch_size=len(recs), max_steps=1, lr=1e-12, max_grad_norm=None, speed=DPOSpeed(**switches))

    def grab(step, m):
        for name, p in policy.named_parameters():
            grads[name] = p.grad.detach().clone()

    hist = train_dpo(policy, ref, tok, recs, cfg, callback=grab)
    return hist[0]["loss"], grads


@pytest.mark.parametrize("switch", ["concat_forward", "cache_reference", "trim_padding"])
def test_speed_switches_change_nothing(model_tok, records, switch):
    recs = records[:10]
    loss_on, g_on = _loss_and_grads(model_tok, recs)
    loss_off, g_off = _loss_and_grads(model_tok, recs, **{switch: False})
    assert loss_on == pytest.approx(loss_off, abs=1e-5)
    for name in g_on:
        assert torch.allclose(g_on[name], g_off[name], atol=1e-5), name


def test_packing_changes_nothing(model_tok, records):
    """Packed rows (block-diagonal mask, positions restarting) give the same loss and gradients."""
    recs = records[:12]
    loss_pad, g_pad = _loss_and_grads(model_tok, recs)
    loss_pack, g_pack = _loss_and_grads(model_tok, recs, pack_sequences=True)
    assert loss_pack == pytest.approx(loss_pad, abs=1e-5)
    for name in g_pad:
        assert torch.allclose(g_pack[name], g_pad[name], atol=1e-5), name


def test_packed_logps_equal_padded_ones(model_tok, records):
    from preflab.dpo import encode_pairs, pair_logps
    policy, _, tok = _fresh(model_tok)
    enc = encode_pairs(tok, records)
    idx = torch.arange(len(records))
    with torch.no_grad():
        padded = pair_logps(policy, enc, idx, tok.pad_token_id)
        packed = pair_logps(policy, enc, idx, tok.pad_token_id, pack=True)
    assert torch.allclose(padded[0], packed[0], atol=1e-4) and torch.allclose(padded[1], packed[1], atol=1e-4)


def test_training_on_separable_pairs_raises_accuracy(model_tok):
    world = make_world(0)
    prompts = world.sample_prompts(32, kind="howto", rng=5)
    # chosen: the correct steps; rejected: a refusal. Separable by construction.
    recs = [{"prompt": p, "chosen": world.best_response(p), "rejected": "sorry, i can not help with that."}
            for p in prompts]
    policy, ref, tok = _fresh(model_tok)
    before = evaluate_pairs(policy, tok, recs, Q(beta=0.1), reference=ref)
    hist = train_dpo(policy, ref, tok, recs, Q(beta=0.1, lr=1e-3, batch_size=16, epochs=4))
    after = evaluate_pairs(policy, tok, recs, Q(beta=0.1), reference=ref)
    assert before["rewards/accuracies"] == 0.0  # policy == reference: every margin is 0 (ties count as wrong)
    assert after["rewards/accuracies"] >= 0.9
    assert after["loss"] < hist[0]["loss"] - 0.1
    assert after["rewards/margins"] > 0


@pytest.mark.parametrize("loss_type", ["ipo", "cdpo", "robust", "hinge", "rdpo", "simpo"])
def test_every_loss_type_trains(model_tok, records, loss_type):
    policy, ref, tok = _fresh(model_tok)
    cfg = Q(loss_type=loss_type, beta=0.1, alpha=0.05, batch_size=8, max_steps=2)
    hist = train_dpo(policy, None if loss_type == "simpo" else ref, tok, records, cfg)
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)


def test_averaged_logps_divide_by_response_tokens(model_tok, records):
    policy, ref, tok = _fresh(model_tok)
    recs = records[:6]
    ref_lp = precompute_reference_logps(ref, tok, recs)
    enc = encode_pairs(tok, recs)
    assert torch.equal(ref_lp["chosen_len"], enc.chosen_len.float())
    r = implicit_reward(policy, ref, tok, [x["prompt"] for x in recs], [x["chosen"] for x in recs], beta=0.1)
    assert abs(r).max() < 1e-5  # same model: zero implicit reward
    # IPO on averages: margin target 1/(2 tau); at step 0 the loss is (0 - 1/(2 tau))^2
    hist = train_dpo(policy, ref, tok, recs, Q(loss_type="ipo", tau=0.5, average_logps=True,
                                                      batch_size=6, max_steps=1))
    assert hist[0]["loss"] == pytest.approx(1.0, abs=1e-5)


def test_eval_records_and_early_stop(model_tok, records):
    policy, ref, tok = _fresh(model_tok)
    hist = train_dpo(policy, ref, tok, records[:16], Q(batch_size=8, epochs=3, eval_every=2), eval_records=records[16:],
                     callback=lambda step, m: step == 3)
    assert len(hist) == 4
    assert "eval_rewards/accuracies" in hist[1] and "eval_loss" in hist[3]
    assert "eval_loss" not in hist[0]


def test_bad_records_give_clear_errors(model_tok, records):
    policy, ref, tok = _fresh(model_tok)
    good = records[0]
    with pytest.raises(ValueError, match="empty 'rejected'"):
        train_dpo(policy, ref, tok, [good, {**good, "rejected": "  "}])
    with pytest.raises(ValueError, match="no 'chosen' key"):
        train_dpo(policy, ref, tok, [{"prompt": good["prompt"], "rejected": "x"}])
    with pytest.raises(ValueError, match="is empty"):
        train_dpo(policy, ref, tok, [])
    with pytest.raises(ValueError, match="needs a reference"):
        train_dpo(policy, None, tok, [good])
    with pytest.raises(ValueError, match="reference is the policy"):
        train_dpo(policy, policy, tok, [good])
    with pytest.raises(ValueError, match="loss_type"):
        Q(loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        Q(beta=0)
    assert drop_empty([good, {**good, "chosen": ""}]) == [good]
