"""Tests for preflab.ppo: per-token rewards, GAE against a loop, whitening, the clipped loss,
and a short real PPO run on the tiny model (reward goes up on an easy reward, reference unchanged)."""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the tiny model runs fastest on one thread, and the test machine is shared

from preflab.model import load_policy, model_version
from preflab.ppo import (PPOConfig, clipped_surrogate, frozen_copy, gae_advantages, per_token_rewards,
                         train_ppo, whiten)
from preflab.world import make_world


def gae_loop(r, v, gamma, lam):
    """Reference GAE for one response (1-D arrays), as written in the paper."""
    T = len(r)
    adv = np.zeros(T)
    last = 0.0
    for t in reversed(range(T)):
        nxt = v[t + 1] if t + 1 < T else 0.0
        delta = r[t] + gamma * nxt - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_matches_the_backward_loop_on_ragged_rows():
    rng = np.random.default_rng(0)
    B, T = 4, 9
    spans = [(2, 9), (3, 5), (1, 2), (4, 8)]  # response tokens [s, e) per row
    mask = torch.zeros(B, T)
    for b, (s, e) in enumerate(spans):
        mask[b, s:e] = 1
    r = torch.tensor(rng.normal(size=(B, T)), dtype=torch.float64) * mask
    v = torch.tensor(rng.normal(size=(B, T)), dtype=torch.float64) * mask
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (1.0, 0.0)):
        adv, ret = gae_advantages(r, v, mask, gamma, lam)
        for b, (s, e) in enumerate(spans):
            want = gae_loop(r[b, s:e].numpy(), v[b, s:e].numpy(), gamma, lam)
            assert np.allclose(adv[b, s:e].numpy(), want)
            assert np.allclose(ret[b, s:e].numpy(), want + v[b, s:e].numpy())
        assert float(adv[mask == 0].abs().max()) == 0.0
    # lam = 1, gamma = 1: the advantage is the reward-to-go minus the value
    adv, _ = gae_advantages(r, v, mask, 1.0, 1.0)
    togo = torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1])
    assert torch.allclose(adv, (togo - v) * mask)


def test_per_token_rewards_put_the_score_on_the_last_response_token():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.float32)
    logp = torch.full((2, 5), -1.0) * mask
    ref = torch.full((2, 5), -1.5) * mask
    r = per_token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(r[0], torch.tensor([0.0, -0.05, -0.05, 2.0 - 0.05, 0.0]))
    assert torch.allclose(r[1], torch.tensor([0.0, 0.0, -1.0 - 0.05, 0.0, 0.0]))
    # summed penalty = kl_coef * sequence log-ratio
    assert float(r.sum() - 1.0) == pytest.approx(-0.1 * float(((logp - ref) * mask).sum()))
    with pytest.raises(ValueError, match="at least one response token"):
        per_token_rewards(torch.tensor([1.0]), logp[:1], ref[:1], torch.zeros(1, 5), 0.1)


def test_whiten_and_clipped_surrogate():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]])
    w = whiten(x, mask)
    vals = w[mask.bool()]
    assert float(vals.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(vals.pow(2).mean()) == pytest.approx(1.0, abs=1e-4)
    assert float(w[0, 2]) == 0.0
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    m = torch.ones(1, 2)
    # ratio 1.5 with A > 0 is clipped at 1.2; ratio 0.5 with A < 0 is clipped at 0.8
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    loss, info = clipped_surrogate(new, old, adv, m, 0.2)
    assert float(loss) == pytest.approx((-1.2 + 0.8) / 2)
    assert info["clipfrac"] == pytest.approx(1.0)
    # unclipped side: ratio 0.9 with A > 0 gives -0.9
    loss, _ = clipped_surrogate(torch.log(torch.tensor([[0.9]])), torch.zeros(1, 1), torch.ones(1, 1),
                                torch.ones(1, 1), 0.2)
    assert float(loss) == pytest.approx(-0.9)


def test_config_validation():
    with pytest.raises(ValueError, match="kl_coef"):
        PPOConfig(kl_coef=-1)
    with pytest.raises(ValueError, match="steps"):
        PPOConfig(steps=0)
    with pytest.raises(ValueError, match="gamma and lam"):
        PPOConfig(lam=1.5)


def test_short_ppo_run_raises_an_easy_reward_and_keeps_the_reference_frozen():
    torch.manual_seed(0)
    policy, tok = load_policy(scale="tiny")
    ref = frozen_copy(policy)
    ref_version = model_version(ref)
    world = make_world(0)
    prompts = world.sample_prompts(200, kind="review", rng=0)

    def positive_words(ps, rs):  # an easy, dense reward: count positive sentiment words
        return [float(sum(w.strip(".!") in ("great", "wonderful", "moving", "brilliant", "beautiful", "fun")
                          for w in r.split())) for r in rs]

    cfg = PPOConfig(steps=6, prompts_per_step=32, minibatch_size=16, ppo_epochs=2, lr=1e-3, kl_coef=0.01,
                    max_new_tokens=24, eval_every=3, seed=0, progress=False)
    calls = []
    hist = train_ppo(policy, ref, tok, prompts, positive_words, cfg,
                     eval_fn=lambda pol: {"probe": 1.0}, callback=lambda s, row: calls.append(s))
    assert len(hist) == cfg.steps + 1 and calls == list(range(cfg.steps + 1))
    assert abs(hist[0]["kl"]) < 1e-4  # step 0 is the starting policy: identical to the reference
    assert [h.get("probe") for h in hist] == [1.0, None, None, 1.0, None, None, 1.0]
    assert np.mean([h["reward"] for h in hist[-2:]]) > hist[0]["reward"]
    assert hist[-1]["kl"] > 0
    assert model_version(ref) == ref_version and model_version(policy) != ref_version
    for key in ("clipfrac", "approx_kl", "value_loss", "pg_loss"):
        assert np.isfinite(hist[0][key])


def test_ptx_term_and_input_errors():
    policy, tok = load_policy(scale="tiny")
    ref = frozen_copy(policy)
    world = make_world(0)
    prompts = world.sample_prompts(20, kind="arith", rng=0)
    gold = lambda ps, rs: [world.gold_reward(p, r) for p, r in zip(ps, rs)]
    with pytest.raises(ValueError, match="ptx_texts"):
        train_ppo(policy, ref, tok, prompts, gold, PPOConfig(steps=1, ptx_coef=1.0))
    with pytest.raises(ValueError, match="frozen_copy"):
        train_ppo(policy, policy, tok, prompts, gold, PPOConfig(steps=1))
    cfg = PPOConfig(steps=1, prompts_per_step=8, minibatch_size=8, ppo_epochs=1, ptx_coef=0.5, ptx_batch_size=4,
                    max_new_tokens=16, progress=False)
    hist = train_ppo(policy, ref, tok, prompts, gold, cfg, ptx_texts=["3 plus 4 is 7.", "1 plus 1 is 2."])
    assert np.isfinite(hist[0]["ptx_loss"]) and hist[0]["ptx_loss"] > 0
