"""Tests for preflab.online_dpo: the loop samples from the right model each round, counts labels,
reuses train_dpo's step, and stops on request."""

import copy

import pytest
import torch

torch.set_num_threads(1)

from preflab.dpo import DPOConfig
from preflab.model import load_policy, model_version
from preflab.online_dpo import OnlineDPOConfig, config_dict, train_online_dpo
from preflab.ppo import frozen_copy
from preflab.world import Labeler, make_world


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_policy("tiny")
    return model, frozen_copy(model), tok


def _run(tiny, on_policy, **kw):
    model, ref, tok = tiny
    w = make_world(0)
    cfg = OnlineDPOConfig(rounds=2, prompts_per_round=24, on_policy=on_policy, max_new_tokens=24, seed=0, progress=False,
                          dpo=DPOConfig(beta=0.1, lr=1e-3, batch_size=12))
    policy = copy.deepcopy(model)
    hist = train_online_dpo(policy, ref, tok, w, w.sample_prompts(100, rng=1), cfg,
                            labeler=Labeler(temperature=0.1), **kw)
    return hist, policy, ref


def test_online_rounds_sample_from_the_current_policy(tiny):
    hist, policy, ref = _run(tiny, True, eval_fn=lambda p: {"probe": 1.0})
    ends = [h for h in hist if "round_policy_version" in h]
    assert [h["round"] for h in ends] == [0, 1]
    assert ends[0]["round_policy_version"] == model_version(ref)      # round 0: the policy is still the SFT model
    assert ends[1]["round_policy_version"] != model_version(ref)      # round 1: it has moved
    assert all(h["probe"] == 1.0 for h in ends)
    assert [h["global_step"] for h in hist] == list(range(len(hist)))
    assert ends[-1]["labels"] == sum(h["round_pairs"] for h in ends)
    assert hist[0]["loss"] == pytest.approx(0.6931, abs=1e-3)         # DPO starts at log 2


def test_offline_control_samples_every_round_from_the_reference(tiny):
    hist, policy, ref = _run(tiny, False)
    versions = {h["round_policy_version"] for h in hist if "round_policy_version" in h}
    assert versions == {model_version(ref)}
    assert model_version(policy) != model_version(ref)


def test_callback_stops_and_config_checks(tiny):
    hist, _, _ = _run(tiny, True, callback=lambda s, m: s == 1)
    assert len(hist) == 2
    with pytest.raises(ValueError, match="epochs_per_round"):
        OnlineDPOConfig(dpo=DPOConfig(max_steps=3))
    with pytest.raises(ValueError, match="simpo"):
        OnlineDPOConfig(dpo=DPOConfig(loss_type="simpo"))
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        OnlineDPOConfig(rounds=0)
    assert config_dict(OnlineDPOConfig())["dpo"]["beta"] == 0.1
