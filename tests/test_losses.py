"""Tests for preflab.losses: hand-worked values, invariants, TRL cross-checks, extreme margins, errors."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from preflab.losses import (
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    preference_metrics,
    rdpo_loss,
    robust_dpo_loss,
    sft_loss,
    simpo_loss,
)

LOG2 = math.log(2.0)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def random_logps(n, seed=0):
    """Four float64 tensors of plausible summed log-probs (negative, tens of nats)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(-torch.rand(n, generator=g, dtype=torch.float64) * 40 - 1 for _ in range(4))


# ----------------------------------------------------------------------------------------------
# hand-worked values


def test_dpo_at_zero_margin_is_log2():
    # policy == reference: h = 0, loss = -log sigmoid(0) = log 2, both rewards 0
    losses, cr, rr = dpo_loss(t(-5.0, -7.0), t(-9.0, -1.0), t(-5.0, -7.0), t(-9.0, -1.0), beta=0.1)
    assert torch.allclose(losses, t(LOG2, LOG2))
    assert torch.equal(cr, t(0.0, 0.0)) and torch.equal(rr, t(0.0, 0.0))


def test_dpo_hand_value_and_rewards():
    # pc=-10, pr=-12, rc=-11, rr=-11: chosen log-ratio +1, rejected -1, h = 2
    # loss = -log sigmoid(0.1 * 2) = log(1 + exp(-0.2)) = log(1.8187307531) = 0.5981388693
    losses, cr, rr = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert losses.item() == pytest.approx(0.5981388693, abs=1e-10)
    assert cr.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)


def test_dpo_argument_order_is_pc_pr_rc_rr():
    # only the policy's chosen log-prob rises: h > 0, loss below log 2 and chosen reward > 0
    losses, cr, rr = dpo_loss(t(-4.0), t(-5.0), t(-5.0), t(-5.0), beta=1.0)
    assert losses.item() < LOG2 and cr.item() == pytest.approx(1.0) and rr.item() == 0.0


def test_dpo_gradient_matches_closed_form():
    # d loss / d pc = -beta * sigmoid(-beta h); d loss / d pr = +beta * sigmoid(-beta h)
    pc, pr, rc, rr = random_logps(6, seed=1)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    beta = 0.3
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    losses.sum().backward()
    h = (pc - rc) - (pr - rr)
    expected = -beta * torch.sigmoid(-beta * h.detach())
    assert torch.allclose(pc.grad, expected) and torch.allclose(pr.grad, -expected)


def test_rewards_are_detached():
    pc, pr, rc, rr = random_logps(3)
    pc.requires_grad_(True)
    _, cr, _ = dpo_loss(pc, pr, rc, rr, 0.1)
    assert not cr.requires_grad


def test_ipo_hand_values():
    # tau = 0.5: target margin 1/(2 tau) = 1. h = 2 -> (2 - 1)^2 = 1; h = 1 -> 0; h = 0 -> 1
    same = t(-3.0, -3.0, -3.0)
    losses, cr, _ = ipo_loss(t(-1.0, -2.0, -3.0), same, same, same, tau=0.5)
    assert torch.allclose(losses, t(1.0, 0.0, 1.0))
    assert torch.allclose(cr, t(1.0, 0.5, 0.0))  # tau * (pc - rc)


def test_cdpo_hand_values_and_finite_optimum():
    # h = 0: -(0.9 + 0.1) log sigmoid(0) = log 2; eps = 0 is DPO
    losses, _, _ = cdpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=1.0, eps=0.1)
    assert losses.item() == pytest.approx(LOG2)
    pc, pr, rc, rr = random_logps(5)
    assert torch.allclose(cdpo_loss(pc, pr, rc, rr, 0.2, 0.0)[0], dpo_loss(pc, pr, rc, rr, 0.2)[0])
    # minimum at beta h = log((1 - eps) / eps) = log 9: the gradient vanishes there
    beta, eps = 0.5, 0.1
    pc = torch.tensor([math.log(9) / beta], dtype=torch.float64, requires_grad=True)
    cdpo_loss(pc, t(0.0), t(0.0), t(0.0), beta, eps)[0].sum().backward()
    assert abs(pc.grad.item()) < 1e-12


def test_robust_dpo_hand_value_and_unbiasedness():
    # h = 0: (0.9 log 2 - 0.1 log 2) / 0.8 = log 2
    assert robust_dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), 1.0, 0.1)[0].item() == pytest.approx(LOG2)
    # labels flipped with probability eps: E[robust loss] = clean DPO loss (Chowdhury et al. 2024, Lemma 3.1)
    pc, pr, rc, rr = random_logps(8, seed=2)
    beta, eps = 0.1, 0.2
    kept = robust_dpo_loss(pc, pr, rc, rr, beta, eps)[0]
    flipped = robust_dpo_loss(pr, pc, rr, rc, beta, eps)[0]  # chosen and rejected swapped
    expected = (1 - eps) * kept + eps * flipped
    assert torch.allclose(expected, dpo_loss(pc, pr, rc, rr, beta)[0], atol=1e-12)


def test_hinge_hand_values():
    # beta = 1: h = 0.25 -> 0.75; h = 2 -> 0; h = -1 -> 2
    losses, _, _ = hinge_loss(t(0.25, 2.0, -1.0), t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0), beta=1.0)
    assert torch.allclose(losses, t(0.75, 0.0, 2.0))


def test_rdpo_hand_value_and_sign():
    # beta = 1, h = 0, alpha = 0.5, |y_w| = 3, |y_l| = 1: -log sigmoid(1) = log(1 + e^-1) = 0.3132616875
    losses, _, _ = rdpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), 1.0, 0.5, t(3.0), t(1.0))
    assert losses.item() == pytest.approx(0.3132616875, abs=1e-10)
    pc, pr, rc, rr = random_logps(5, seed=3)
    lens_c, lens_r = t(30.0, 5, 12, 8, 40), t(10.0, 20, 12, 3, 1)
    # alpha = 0 is DPO
    assert torch.allclose(rdpo_loss(pc, pr, rc, rr, 0.1, 0.0, lens_c, lens_r)[0], dpo_loss(pc, pr, rc, rr, 0.1)[0])
    # a longer winner: smaller loss and a smaller push on the chosen log-prob than DPO's
    pc = pc.clone().requires_grad_(True)
    dpo_loss(pc, pr, rc, rr, 0.1)[0].sum().backward()
    g_dpo = pc.grad.clone()
    pc.grad = None
    r_losses = rdpo_loss(pc, pr, rc, rr, 0.1, 0.05, lens_c, lens_r)[0]
    r_losses.sum().backward()
    longer = lens_c > lens_r
    assert torch.all(r_losses.detach()[longer] < dpo_loss(pc, pr, rc, rr, 0.1)[0].detach()[longer])
    assert torch.all(pc.grad[longer].abs() < g_dpo[longer].abs())
    assert torch.all(pc.grad[~longer].abs() >= g_dpo[~longer].abs())


def test_simpo_hand_value():
    # beta = 2, gamma = 1, avg_c = -1, avg_r = -1.5: 2 * 0.5 - 1 = 0 -> log 2; rewards -2, -3
    losses, cr, rr = simpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=1.0)
    assert losses.item() == pytest.approx(LOG2)
    assert cr.item() == pytest.approx(-2.0) and rr.item() == pytest.approx(-3.0)


def test_preference_metrics_hand_values():
    m = preference_metrics(t(1.0, 0.0, 2.0, -1.0), t(0.0, 0.0, 1.0, 1.0))
    assert m == pytest.approx(
        {"rewards/chosen": 0.5, "rewards/rejected": 0.5, "rewards/accuracies": 0.5, "rewards/margins": 0.0}
    )
    assert all(isinstance(v, float) for v in m.values())


# ----------------------------------------------------------------------------------------------
# SFT loss


def test_sft_uniform_logits_give_log_vocab():
    # all-zero logits: every next-token prediction costs log V
    logits = torch.zeros(2, 5, 4)
    labels = torch.tensor([[0, 1, 2, 3, 0], [3, 2, 1, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert sft_loss(logits, labels, mask).item() == pytest.approx(math.log(4), abs=1e-6)


def test_sft_hand_value_and_shift():
    # B=1, T=3, V=2. Response = tokens 1 and 2. Position 0 predicts token 1 (id 1), position 1 predicts
    # token 2 (id 0). logits[0] = [0, log 3] -> p(1) = 3/4; logits[1] = [log 3, 0] -> p(0) = 3/4.
    # loss = -log(3/4) = 0.2876820725; logits[2] predicts nothing and must not matter.
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(3), 0.0], [100.0, -100.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[0, 1, 1]])
    assert sft_loss(logits, labels, mask).item() == pytest.approx(0.2876820725, abs=1e-10)


def test_sft_ignores_prompt_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 7, generator=g)
    labels = torch.randint(0, 7, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    base = sft_loss(logits, labels, mask)
    changed = logits.clone()
    changed[0, :2] += 50 * torch.randn(2, 7, generator=g)  # positions predicting prompt tokens 1 and 2
    changed[1, 3:] -= 50  # positions predicting padding
    assert torch.allclose(sft_loss(changed, labels, mask), base)


def test_sft_matches_transformers_causal_lm_loss():
    # Hugging Face's own loss (what model(input_ids, labels=...).loss computes), with -100 outside the response
    loss_utils = pytest.importorskip("transformers.loss.loss_utils")
    g = torch.Generator().manual_seed(1)
    B, T, V = 3, 9, 11
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[0, 4:] = 1
    mask[1, 2:7] = 1
    mask[2, 8:] = 1
    hf = loss_utils.ForCausalLMLoss(logits, labels.masked_fill(mask == 0, -100), vocab_size=V)
    assert torch.allclose(sft_loss(logits, labels, mask), hf, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# cross-check against TRL's DPOTrainer loss code
#
# In TRL 1.16 the losses are inline in DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py, the
# `for loss_type, loss_weight in ...` loop), after a model forward. We call that real method with a
# stand-in `self` (SimpleNamespace with exactly the attributes the method reads on this path: any
# missing one would raise AttributeError) and a stand-in model that returns per-token log-probs
# whose sum over the completion is the log-prob we want. Reference log-probs go in precomputed,
# as TRL does with precompute_ref_log_probs=True. TRL returns the batch mean, so per-example
# values come from batches of one.


class _FakeCausalLM:
    """Returns the fused-LM-head outputs that _compute_loss reads: log_probs and three metric tensors."""

    training = True

    def __init__(self, log_probs):
        self.log_probs = log_probs

    def __call__(self, **kwargs):
        n, s = self.log_probs.shape
        zeros = torch.zeros(n, s, dtype=self.log_probs.dtype)
        return SimpleNamespace(
            log_probs=self.log_probs, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros(n, s, dtype=torch.bool)
        )


#: The TRL releases these parity tests were run with. TRL's loss code is private API
#: (DPOTrainer._compute_loss, CPOTrainer.cpo_loss) and moves between releases, so another
#: version skips, saying so, instead of failing for a reason that is not ours.
TRL_TESTED = ("1.16.",)


def _require_tested_trl():
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith(TRL_TESTED):
        pytest.skip(f"TRL parity was checked against TRL {', '.join(v + '*' for v in TRL_TESTED)}; installed "
                    f"{trl.__version__} (pip install 'trl==1.16.*' to run these)")


def trl_dpo_loss(loss_type, pc, pr, rc, rr, beta, label_smoothing=0.0, chosen_len=None, rejected_len=None):
    """Run TRL's DPOTrainer._compute_loss on given summed log-probs; returns (mean loss, logged metrics)."""
    _require_tested_trl()
    from trl.trainer.dpo_trainer import DPOTrainer

    B, T = pc.shape[0], 12
    chosen_len = torch.full((B,), 5) if chosen_len is None else chosen_len
    rejected_len = torch.full((B,), 5) if rejected_len is None else rejected_len
    lens = torch.cat([chosen_len, rejected_len]).long()  # the batch is [chosen..., rejected...]
    completion_mask = (torch.arange(T)[None, :] >= T - lens[:, None]).long()  # prompt left, completion right
    log_probs = torch.zeros(2 * B, T - 1, dtype=pc.dtype)  # per-token log-probs of tokens 1..T-1
    log_probs[:, -1] = torch.cat([pc, pr])  # all mass on the last completion token: the sum is the log-prob
    model = _FakeCausalLM(log_probs)
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    stand_in = SimpleNamespace(
        model=model,
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = DPOTrainer._compute_loss(stand_in, model, inputs, return_outputs=False)
    metrics = {k: v[0] for k, v in stand_in._metrics["train"].items()}
    return loss, metrics


def per_example_trl(loss_type, pc, pr, rc, rr, beta, **kw):
    out = []
    for i in range(pc.shape[0]):
        extra = {k: v[i : i + 1] for k, v in kw.items() if isinstance(v, torch.Tensor)}
        extra.update({k: v for k, v in kw.items() if not isinstance(v, torch.Tensor)})
        one = (x[i : i + 1] for x in (pc, pr, rc, rr))
        out.append(trl_dpo_loss(loss_type, *one, beta, **extra)[0])
    return torch.stack(out)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_sigmoid(beta):
    pc, pr, rc, rr = random_logps(8, seed=10)
    ours = dpo_loss(pc, pr, rc, rr, beta)[0]
    assert torch.allclose(ours, per_example_trl("sigmoid", pc, pr, rc, rr, beta), atol=1e-10)


def test_hinge_matches_trl():
    pc, pr, rc, rr = random_logps(8, seed=11)
    beta = 0.3  # margins on both sides of 1 with these inputs
    ours = hinge_loss(pc, pr, rc, rr, beta)[0]
    assert (ours > 0).any() and (ours == 0).any()
    assert torch.allclose(ours, per_example_trl("hinge", pc, pr, rc, rr, beta), atol=1e-10)


def test_robust_matches_trl():
    pc, pr, rc, rr = random_logps(8, seed=12)
    ours = robust_dpo_loss(pc, pr, rc, rr, 0.1, 0.2)[0]
    theirs = per_example_trl("robust", pc, pr, rc, rr, 0.1, label_smoothing=0.2)
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_ipo_matches_trl_with_per_token_averaged_logps():
    # TRL's IPO divides each sequence's log-ratio by its completion length (and its rewards stay summed);
    # preflab's ipo_loss takes whatever the caller computed, so pass the averaged log-probs.
    pc, pr, rc, rr = random_logps(8, seed=13)
    g = torch.Generator().manual_seed(13)
    n_c = torch.randint(1, 11, (8,), generator=g)
    n_r = torch.randint(1, 11, (8,), generator=g)
    tau = 0.25
    ours = ipo_loss(pc / n_c, pr / n_r, rc / n_c, rr / n_r, tau)[0]
    theirs = per_example_trl("ipo", pc, pr, rc, rr, tau, chosen_len=n_c, rejected_len=n_r)
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_cdpo_matches_trl_aot_on_single_pairs():
    # TRL 1.16 dropped label smoothing from loss_type="sigmoid" (cDPO used to live there). Its "aot" loss is
    # -(1-eps) log sigmoid(beta*delta) - eps log sigmoid(-beta*delta) with delta the *sorted* log-ratio
    # differences across the batch; on a batch of one the sort is the identity and delta = h: exactly cDPO.
    pc, pr, rc, rr = random_logps(8, seed=14)
    ours = cdpo_loss(pc, pr, rc, rr, 0.1, 0.15)[0]
    theirs = per_example_trl("aot", pc, pr, rc, rr, 0.1, label_smoothing=0.15)
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_batch_mean_and_metrics_match_trl():
    pc, pr, rc, rr = random_logps(16, seed=15)
    beta = 0.1
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
    loss, metrics = trl_dpo_loss("sigmoid", pc, pr, rc, rr, beta)
    assert loss.item() == pytest.approx(losses.mean().item(), abs=1e-10)
    ours = preference_metrics(cr, rj)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert ours[name] == pytest.approx(metrics[name], abs=1e-10), name
    assert 0 < ours["rewards/accuracies"] < 1


def test_simpo_matches_trl_cpo_trainer(monkeypatch):
    # TRL 1.16's DPOTrainer has no SimPO; it lives in trl.experimental.cpo (CPOTrainer.cpo_loss, loss_type
    # "simpo", fed per-token averaged log-probs). That method is standalone: call it with a stand-in self
    # carrying exactly the attributes it reads.
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    _require_tested_trl()
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    g = torch.Generator().manual_seed(16)
    avg_c = -torch.rand(8, generator=g, dtype=torch.float64) * 3
    avg_r = -torch.rand(8, generator=g, dtype=torch.float64) * 3
    beta, gamma = 2.0, 0.5
    stand_in = SimpleNamespace(
        alpha=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        loss_type="simpo",
        simpo_gamma=gamma,
        beta=beta,
        label_smoothing=0.0,
    )
    theirs = cpo.CPOTrainer.cpo_loss(stand_in, avg_c, avg_r)
    ours = simpo_loss(avg_c, avg_r, beta, gamma)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-12)
    # and the formula of Meng et al. 2024, eq. 6, written out independently
    assert torch.allclose(ours[0], torch.log1p(torch.exp(-(beta * (avg_c - avg_r) - gamma))), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# extreme margins: finite losses and finite gradients


def _all_losses(pc, pr, rc, rr):
    n = pc.shape[0]
    lens = torch.full((n,), 7.0, dtype=pc.dtype), torch.full((n,), 3.0, dtype=pc.dtype)
    return {
        "dpo": dpo_loss(pc, pr, rc, rr, 0.1)[0],
        "ipo": ipo_loss(pc, pr, rc, rr, 0.1)[0],
        "cdpo": cdpo_loss(pc, pr, rc, rr, 0.1, 0.1)[0],
        "robust": robust_dpo_loss(pc, pr, rc, rr, 0.1, 0.1)[0],
        "hinge": hinge_loss(pc, pr, rc, rr, 0.1)[0],
        "rdpo": rdpo_loss(pc, pr, rc, rr, 0.1, 0.5, *lens)[0],
        "simpo": simpo_loss(pc, pr, 0.1, 0.5)[0],
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_no_nan_or_inf_at_extreme_margins(dtype, scale):
    # h = (pc - rc) - (pr - rr) = +-2e4 (scale 1) or +-2e5 (scale 10); with beta = 0.1, beta*h up to +-2e4
    big = 1e4 * scale
    pc = torch.tensor([big, -big, 0.0, big], dtype=dtype)
    pr = torch.tensor([-big, big, 0.0, big], dtype=dtype)
    rc = torch.zeros(4, dtype=dtype)
    rr = torch.zeros(4, dtype=dtype)
    for name in _all_losses(pc, pr, rc, rr):
        a = pc.clone().requires_grad_(True)
        b = pr.clone().requires_grad_(True)
        loss = _all_losses(a, b, rc, rr)[name]
        assert torch.isfinite(loss).all(), (name, loss)
        loss.sum().backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), name
    # DPO saturates correctly: zero loss for a huge positive margin, linear for a huge negative one
    d = dpo_loss(pc, pr, rc, rr, 0.1)[0]
    assert d[0].item() == 0.0 and d[1].item() == pytest.approx(0.1 * 2 * big, rel=1e-6)


def test_sft_finite_with_extreme_logits():
    logits = torch.tensor([[[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[0, 0, 2]])
    loss = sft_loss(logits, labels, torch.tensor([[0, 1, 1]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------------------------
# clear errors


def test_errors():
    pc, pr, rc, rr = random_logps(3)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(pc, pr[:2], rc, rr, 0.1)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            dpo_loss(pc, pr, rc, rr, bad)
    with pytest.raises(ValueError, match="beta must be a real number"):
        dpo_loss(pc, pr, rc, rr, "0.1")
    with pytest.raises(ValueError, match="tau"):
        ipo_loss(pc, pr, rc, rr, 0.0)
    for fn in (cdpo_loss, robust_dpo_loss):
        for eps in (0.5, -0.1, 0.7):
            with pytest.raises(ValueError, match=r"eps.*\[0, 0.5\)"):
                fn(pc, pr, rc, rr, 0.1, eps)
    with pytest.raises(ValueError, match="alpha"):
        rdpo_loss(pc, pr, rc, rr, 0.1, -1.0, t(1.0, 2, 3), t(1.0, 2, 3))
    with pytest.raises(ValueError, match="chosen_len"):
        rdpo_loss(pc, pr, rc, rr, 0.1, 0.1, t(1.0, 2), t(1.0, 2, 3))
    with pytest.raises(ValueError, match="rejected_len must be >= 0"):
        rdpo_loss(pc, pr, rc, rr, 0.1, 0.1, t(1.0, 2, 3), t(1.0, -2, 3))
    with pytest.raises(ValueError, match="same shape"):
        simpo_loss(pc, pr[:1], 1.0, 0.5)
    with pytest.raises(ValueError, match="real numbers"):
        dpo_loss(pc > 0, pr, rc, rr, 0.1)


def test_sft_errors():
    logits = torch.zeros(2, 4, 5)
    labels = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no response token"):
        sft_loss(logits, labels, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no response token"):
        sft_loss(logits, labels, torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]))  # position 0 predicts nothing
    with pytest.raises(ValueError, match="labels must have shape"):
        sft_loss(logits, labels[:, :3], torch.ones(2, 4))
    with pytest.raises(ValueError, match="response_mask must have shape"):
        sft_loss(logits, labels, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"logits must have shape \(B, T, V\)"):
        sft_loss(logits[0], labels, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        sft_loss(logits, labels + 7, torch.ones(2, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        sft_loss(logits, labels, torch.full((2, 4), 2))


def test_preference_metrics_errors():
    with pytest.raises(ValueError, match="same shape"):
        preference_metrics(t(1.0, 2.0), t(1.0))
    with pytest.raises(ValueError, match="empty"):
        preference_metrics(t(), t())
