"""Tests for preflab.kto and preflab.orpo: the losses by hand, at extreme values, against TRL 1.16,
the thumbs labels, and short real runs on the tiny model.

TRL 1.16: KTO's loss is inline in KTOTrainer._compute_loss (trl/trainer/kto_trainer.py, after a model
forward). As for DPO in test_losses.py, we call that real method with a stand-in `self` and a
stand-in model whose per-token log-probs sum to the log-probs we choose, and the reference
log-probs precomputed (precompute_ref_logps=True). ORPO lives in trl.experimental.orpo:
ORPOTrainer.odds_ratio_loss is a method that reads only self.beta and self.accelerator.device, so we
call it with a stand-in; its module-level log1mexp is public and compared directly.
"""

import copy
import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from preflab.kto import (KTOConfig, evaluate_kto, kto_loss, kto_reference_point, thumbs_records, thumbs_up_prob,
                         train_kto)
from preflab.orpo import ORPOConfig, evaluate_orpo, log1mexp, log_odds, odds_ratio_loss, orpo_loss, train_orpo
from preflab.world import Labeler, make_world


# ----------------------------------------------------------------------------- KTO by hand
def test_kto_loss_by_hand():
    pl = torch.tensor([-10.0, -10.0, -12.0])
    rl = torch.tensor([-11.0, -9.0, -12.0])          # log-ratios r = +1, -1, 0
    d = torch.tensor([True, False, True])
    z0, beta = 0.5, 0.1
    losses, rewards = kto_loss(pl, rl, d, z0, beta, desirable_weight=1.0, undesirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([1 - sig(0.1 * (1 - 0.5)), 2 * (1 - sig(0.1 * (0.5 + 1))),
                                             1 - sig(0.1 * (0 - 0.5))])
    assert rewards.tolist() == pytest.approx([0.1, -0.1, 0.0])
    # at the start (policy = reference, z0 = 0) every loss is lambda / 2
    l0, _ = kto_loss(pl, pl, d, 0.0, beta, 1.0, 2.0)
    assert l0.tolist() == pytest.approx([0.5, 1.0, 0.5])


def test_kto_reference_point_is_clamped_and_detached():
    p = torch.tensor([-5.0, -7.0], requires_grad=True)
    z = kto_reference_point(p, torch.tensor([-6.0, -6.0]))
    assert float(z) == pytest.approx(0.0) and not z.requires_grad   # mean log-ratio 0 -> 0
    z = kto_reference_point(torch.tensor([-5.0, -5.0]), torch.tensor([-6.0, -7.0]))
    assert float(z) == pytest.approx(1.5)
    assert float(kto_reference_point(torch.tensor([-9.0]), torch.tensor([-6.0]))) == 0.0  # negative -> 0


def test_kto_loss_is_finite_and_bounded_at_extreme_margins():
    pl = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=torch.float32, requires_grad=True)
    rl = torch.zeros(4)
    d = torch.tensor([True, True, False, False])
    losses, _ = kto_loss(pl, rl, d, 0.0, 1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pl.grad).all()
    assert losses.tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=0.0), "beta must be > 0"),
    (dict(desirable=[1, 0]), "desirable has shape"),
    (dict(desirable=[0.5, 1.0, 0.0]), "desirable must be booleans"),
    (dict(reference_point=float("nan")), "finite"),
    (dict(ref_logps=torch.zeros(2)), "same shape"),
    (dict(desirable_weight=-1.0), "desirable_weight must be >= 0"),
])
def test_kto_loss_bad_input(kwargs, match):
    args = dict(policy_logps=torch.zeros(3), ref_logps=torch.zeros(3), desirable=[True, False, True],
                reference_point=0.0, beta=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kto_loss(**args)


# ----------------------------------------------------------------------------- KTO against TRL
class _FakeLM:
    """Returns per-token log-probs whose sum is the wanted sequence log-prob: the KL call (input
    ids filled with 7) and the main call get their own values."""

    training = True

    def __init__(self, main, kl, T):
        self.main, self.kl, self.T = main, kl, T

    def _rows(self, v):
        lp = torch.zeros(v.shape[0], self.T - 1, dtype=v.dtype)
        return lp.index_put((torch.arange(v.shape[0]), torch.full((v.shape[0],), self.T - 2)), v)

    def __call__(self, input_ids, **kw):
        v = self.kl if bool((input_ids == 7).all()) else self.main
        n, s = input_ids.shape[0], self.T - 1
        z = torch.zeros(n, s, dtype=v.dtype)
        return SimpleNamespace(log_probs=self._rows(v), entropy=z, mean_logits=z)


def trl_kto(pl, rl, kl_pl, kl_rl, labels, beta, wd=1.0, wu=1.0):
    pytest.importorskip("trl")
    from trl.trainer.kto_trainer import KTOTrainer

    B, T = pl.shape[0], 6
    model = _FakeLM(pl, kl_pl, T)
    stand_in = SimpleNamespace(
        model=model, accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        calculate_KL=True, aux_loss_enabled=False, precompute_ref_logps=True, loss_type="kto", beta=beta,
        desirable_weight=wd, undesirable_weight=wu, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    stand_in._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(stand_in, m, b)
    cm = torch.zeros(B, T, dtype=torch.long)
    cm[:, -2:] = 1
    inputs = {"input_ids": torch.zeros(B, T, dtype=torch.long), "attention_mask": torch.ones(B, T, dtype=torch.long),
              "completion_mask": cm, "KL_input_ids": torch.full((B, T), 7), "KL_attention_mask": torch.ones(B, T),
              "KL_completion_mask": cm, "label": labels, "ref_logps": rl, "ref_KL_logps": kl_rl}
    loss = KTOTrainer._compute_loss(stand_in, model, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in stand_in._metrics["train"].items()}


@pytest.mark.parametrize("scale", [1.0, 50.0])     # 50 nats: log-ratios where the sigmoid saturates
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_kto_matches_trl(scale, beta):
    g = torch.Generator().manual_seed(int(scale + 10 * beta))
    B = 10
    pl = (-torch.rand(B, generator=g, dtype=torch.float64) * 30).requires_grad_(True)
    rl = pl.detach() + scale * torch.randn(B, generator=g, dtype=torch.float64)
    kl_pl = -torch.rand(B, generator=g, dtype=torch.float64) * 30
    kl_rl = kl_pl - scale * torch.rand(B, generator=g, dtype=torch.float64)   # mean log-ratio > 0
    labels = torch.rand(B, generator=g) < 0.6
    labels[0], labels[1] = True, False
    theirs, metrics = trl_kto(pl, rl, kl_pl, kl_rl, labels, beta, 1.0, 1.33)
    (g_theirs,) = torch.autograd.grad(theirs, pl)
    z0 = kto_reference_point(kl_pl, kl_rl)
    losses, rewards = kto_loss(pl, rl, labels, z0, beta, 1.0, 1.33)
    ours = losses.mean()
    (g_ours,) = torch.autograd.grad(ours, pl)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-12, abs=1e-12)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-14)
    assert float(z0) == pytest.approx(metrics["kl"], rel=1e-12)
    assert rewards[labels].mean().item() == pytest.approx(metrics["rewards/chosen"], rel=1e-10)
    assert rewards[~labels].mean().item() == pytest.approx(metrics["rewards/rejected"], rel=1e-10)


# ----------------------------------------------------------------------------- ORPO by hand and against TRL
def test_log1mexp_and_log_odds_by_hand():
    x = torch.tensor([-1e-8, -1e-3, -0.5, -math.log(2), -1.0, -30.0], dtype=torch.float64)
    want = torch.log(1 - torch.exp(x))
    assert torch.allclose(log1mexp(x)[1:], want[1:], rtol=1e-12)
    assert float(log1mexp(x)[0]) == pytest.approx(math.log(1e-6), rel=1e-6)   # clamped at -1e-6
    # P = 0.5 has odds 1: log odds 0
    assert float(log_odds(torch.tensor(math.log(0.5), dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="x <= 0"):
        log1mexp(torch.tensor([0.1]))


def test_orpo_loss_by_hand():
    ac = torch.tensor([math.log(0.5)], dtype=torch.float64)     # odds 1
    ar = torch.tensor([math.log(0.2)], dtype=torch.float64)     # odds 0.25
    losses, nll, lor = orpo_loss(ac, ar, lam=0.5)
    assert float(lor) == pytest.approx(math.log(4.0))
    assert float(nll) == pytest.approx(math.log(2.0))
    assert float(losses) == pytest.approx(math.log(2.0) + 0.5 * math.log1p(0.25))   # -log sigmoid(log 4) = log(1 + 1/4)
    # equal responses: log OR = 0 and the term is lam * log 2
    l2, _ = odds_ratio_loss(ac, ac, lam=2.0)
    assert float(l2) == pytest.approx(2 * math.log(2.0))


def test_orpo_is_finite_at_extreme_values():
    ac = torch.tensor([-1e-9, -1e-9, -80.0, -0.69], requires_grad=True)
    ar = torch.tensor([-80.0, -1e-9, -1e-9, -0.70])
    losses, _, lor = orpo_loss(ac, ar, 1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(ac.grad).all() and torch.isfinite(lor).all()
    with pytest.raises(ValueError, match="must be <= 0"):
        odds_ratio_loss(torch.tensor([0.2]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="same shape"):
        odds_ratio_loss(torch.zeros(2) - 1, torch.zeros(3) - 1)


def _trl_orpo():
    pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import orpo_trainer
    return orpo_trainer


@pytest.mark.parametrize("lam", [0.1, 1.0])
@pytest.mark.parametrize("kind", ["typical", "extreme"])
def test_orpo_matches_trl(lam, kind):
    mod = _trl_orpo()
    g = torch.Generator().manual_seed(5)
    # float32: TRL's odds_ratio_loss casts its inputs with .float(), so both sides compute in float32
    if kind == "typical":
        ac = -torch.rand(12, generator=g) * 3
        ar = -torch.rand(12, generator=g) * 3
    else:  # probabilities near 1 (averages near 0) and near 0 (averages of -60 nats per token)
        ac = torch.tensor([-1e-5, -1e-3, -60.0, -0.6931, -0.6932, -40.0])
        ar = torch.tensor([-60.0, -1e-5, -1e-3, -0.6932, -0.6931, -40.0])
    ac.requires_grad_(True)
    stand_in = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device=torch.device("cpu")))
    t_losses, _, _, t_ratio, t_lor = mod.ORPOTrainer.odds_ratio_loss(stand_in, ac, ar)
    ours, lor = odds_ratio_loss(ac, ar, lam)
    # TRL's losses are lam * log sigmoid(log OR), subtracted from the NLL: ours is their negative
    assert torch.allclose(ours, -t_losses, rtol=1e-6, atol=1e-7)
    # the mean log OR can cancel to ~0 (pairs of +-60): compare it to float32 precision of its terms
    assert float(lor.mean()) == pytest.approx(float(t_lor.detach()), rel=1e-6, abs=1e-5)
    (g1,) = torch.autograd.grad(ours.sum(), ac, retain_graph=True)
    (g2,) = torch.autograd.grad((-t_losses).sum(), ac)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-7)
    x = ac.detach().double()   # log1mexp: the same two branches, compared in float64 (TRL's clamps nothing)
    assert torch.allclose(log1mexp(x), mod.log1mexp(x), rtol=1e-12)


# ----------------------------------------------------------------------------- thumbs labels
def test_thumbs_up_prob_and_records():
    w = make_world(0)
    lab = Labeler(temperature=0.1, flip_prob=0.1)
    p = "what is 3 plus 4?"
    assert thumbs_up_prob(w, lab, p, "3 plus 4 is 7.") == pytest.approx(0.9 * (1 / (1 + math.exp(-5))) + 0.1 * (1 / (1 + math.exp(5))))
    assert thumbs_up_prob(w, lab, p, "3 plus 4 is 9.") < 0.11
    recs = thumbs_records(w, [p] * 200 + [p], ["3 plus 4 is 7."] * 200 + [""], lab, rng=0)
    assert len(recs) == 200                            # the empty response is skipped
    assert 0.8 < np.mean([r["label"] for r in recs]) < 0.95
    assert {"prompt", "completion", "label", "p_label", "gold", "labeler"} <= set(recs[0])
    with pytest.raises(ValueError, match="Labeler"):
        thumbs_up_prob(w, "not a labeler", p, "x")


# ----------------------------------------------------------------------------- short real runs
@pytest.fixture(scope="module")
def tiny():
    from preflab.model import load_policy
    from preflab.ppo import frozen_copy

    model, tok = load_policy("tiny")
    return model, frozen_copy(model), tok


def _unpaired(world, n=64):
    prompts = world.sample_prompts(n, rng=1)
    good = [world.best_response(p) for p in prompts[: n // 2]]
    bad = [world.sample_response(p, rng=i, quality=0.0) for i, p in enumerate(prompts[n // 2:])]
    recs = [{"prompt": p, "completion": y, "label": True} for p, y in zip(prompts[: n // 2], good)]
    recs += [{"prompt": p, "completion": y, "label": False} for p, y in zip(prompts[n // 2:], bad)]
    return [recs[i] for i in np.random.default_rng(0).permutation(len(recs))]


def test_kto_run_starts_at_half_the_weight_and_learns(tiny):
    model, ref, tok = tiny
    w = make_world(0)
    recs = _unpaired(w)
    policy = copy.deepcopy(model)
    cfg = KTOConfig(beta=0.1, lr=1e-3, batch_size=16, max_steps=12, seed=0, progress=False)
    hist = train_kto(policy, ref, tok, recs, cfg)
    assert hist[0]["loss"] == pytest.approx(0.5, abs=1e-5) and hist[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    ev = evaluate_kto(policy, ref, tok, recs, cfg)
    assert ev["loss"] < 0.5 and ev["rewards/accuracy"] > 0.7
    stopped = train_kto(copy.deepcopy(model), ref, tok, recs, cfg, callback=lambda s, m: s == 2)
    assert len(stopped) == 3
    with pytest.raises(ValueError, match="unpaired format"):
        train_kto(policy, ref, tok, [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2, cfg)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        KTOConfig(batch_size=1)


def test_orpo_run_lowers_its_loss_without_a_reference(tiny):
    model, _, tok = tiny
    w = make_world(0)
    prompts = w.sample_prompts(48, rng=2)
    recs = [{"prompt": p, "chosen": w.best_response(p), "rejected": w.sample_response(p, rng=i, quality=0.0)}
            for i, p in enumerate(prompts)]
    recs = [r for r in recs if r["chosen"] != r["rejected"]]
    policy = copy.deepcopy(model)
    cfg = ORPOConfig(lam=1.0, lr=1e-3, batch_size=16, max_steps=12, seed=0, progress=False)
    before = evaluate_orpo(policy, tok, recs, cfg)
    hist = train_orpo(policy, tok, recs, cfg)
    after = evaluate_orpo(policy, tok, recs, cfg)
    assert len(hist) == 12 and after["loss"] < before["loss"]
    assert after["log_odds_ratio"] > before["log_odds_ratio"]
    with pytest.raises(ValueError, match="lam must be >= 0"):
        ORPOConfig(lam=-1.0)
