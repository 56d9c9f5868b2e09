"""Tests for preflab.grpo: group-relative advantages and the GRPO loss by hand, against TRL 1.16's
GRPOTrainer, and a short real run on the tiny model.

TRL 1.16 has no standalone function for either piece. The advantage is computed inline in
GRPOTrainer._generate_and_score_completions (trl/trainer/grpo_trainer.py, the
`multi_objective_aggregation == "sum_then_normalize"` branch), so we compare against that formula,
written with TRL's own public `trl.trainer.utils.nanstd`. The loss is GRPOTrainer._compute_loss,
which we call for real with a stand-in `self` (SimpleNamespace with the attributes the method reads
on this path; a missing one raises AttributeError) whose log-prob method returns the per-token
log-probs we choose.
"""

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from preflab.grpo import (GRPOConfig, answer_first, format_reward, group_advantages, grpo_loss, rollouts,
                          train_grpo, verifier_reward, zero_std_groups)
from preflab.ppo import clipped_surrogate
from preflab.world import make_world


# ----------------------------------------------------------------------------- advantages by hand
def test_group_advantages_by_hand():
    # one right answer in a group of four: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    a = group_advantages([1.0, 0.0, 0.0, 0.0], 4)
    assert isinstance(a, np.ndarray)
    assert np.allclose(a, [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert np.allclose(group_advantages([1.0, 0.0, 0.0, 0.0], 4, scale_rewards="none"), [0.75, -0.25, -0.25, -0.25])
    # each group is centred on its own mean: two groups, one all right, one split
    b = group_advantages(np.array([[1.0, 1.0], [1.0, 0.0]]), 2)
    assert b.shape == (2, 2)
    assert np.allclose(b[0], 0.0)                       # all equal: no signal, whatever the scaling
    assert np.allclose(b[1], [0.5 / (np.sqrt(0.5) + 1e-4), -0.5 / (np.sqrt(0.5) + 1e-4)])
    # "batch" divides by the std of all rewards
    r = np.array([1.0, 0.0, 1.0, 1.0])
    assert np.allclose(group_advantages(r, 2, "batch"), (r - np.repeat([0.5, 1.0], 2)) / (r.std(ddof=1) + 1e-4))


def test_group_advantages_keep_the_input_kind_and_sum_to_zero_per_group():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 6))
    for scale in ("group", "batch", "none"):
        a = group_advantages(r.ravel(), 6, scale)
        assert a.shape == (30,)
        assert np.allclose(a.reshape(5, 6).sum(1), 0.0, atol=1e-12)
    t = torch.tensor(r, dtype=torch.float32)
    at = group_advantages(t, 6)
    assert isinstance(at, torch.Tensor) and at.dtype == torch.float32 and at.shape == (5, 6)
    assert np.allclose(at.numpy(), group_advantages(r, 6), atol=1e-5)
    # scaling by the group's std gives unit sample std within each group (up to eps)
    assert np.allclose(group_advantages(r, 6).std(axis=1, ddof=1), 1.0, atol=1e-3)


def test_zero_std_groups():
    r = [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    z = zero_std_groups(r, 4)
    assert z.tolist() == [True, False, True]
    assert z.mean() == pytest.approx(2 / 3)
    assert np.allclose(group_advantages(r, 4).reshape(3, 4)[z], 0.0)


@pytest.mark.parametrize("bad, match", [
    (dict(rewards=[1.0, 0.0, 1.0], group_size=2), "do not split into groups"),
    (dict(rewards=[1.0, 0.0], group_size=0), "group_size must be a positive integer"),
    (dict(rewards=[1.0, float("nan")], group_size=2), "finite"),
    (dict(rewards=[], group_size=2), "empty"),
    (dict(rewards=np.zeros((2, 3)), group_size=2), "groups of 3"),
    (dict(rewards=[1.0, 0.0], group_size=2, scale_rewards="std"), "scale_rewards must be one of"),
])
def test_group_advantages_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(**bad)


# ----------------------------------------------------------------------------- the loss by hand
def test_length_normalization_by_hand():
    """On-policy (ratio 1): row 0 has 2 tokens and A = +1, row 1 has 4 tokens and A = -1."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    for loss_type, want, w0, w1 in (
        ("grpo", 0.0, -1 / 2 / 2, 1 / 4 / 2),        # mean over rows of (sum_t -A) / |o|
        ("dr_grpo", (-2 + 4) / (2 * 4), -1 / 8, 1 / 8),  # sum / (B * L_max), L_max = 4
        ("bnpo", (-2 + 4) / 6, -1 / 6, 1 / 6),          # sum / total tokens
    ):
        logp = torch.full((2, 4), -1.0, dtype=torch.float64, requires_grad=True)
        loss, stats = grpo_loss(logp, logp.detach(), adv, mask, 0.2, loss_type, max_completion_length=4)
        assert float(loss.detach()) == pytest.approx(want)
        loss.backward()
        # the per-token weight each response gets: 1/|o| under "grpo", the same for all under "dr_grpo"
        assert torch.allclose(logp.grad[0, :2], torch.full((2,), w0, dtype=torch.float64))
        assert torch.allclose(logp.grad[1], torch.full((4,), w1, dtype=torch.float64))
        assert float(logp.grad[0, 2:].abs().sum()) == 0.0
        assert stats["clip_ratio"] == 0.0


def test_clip_and_k3_by_hand():
    m = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    # A > 0: ratio 1.5 is clipped to 1.2 (loss -1.2), ratio 0.5 is not (loss -0.5): mean -0.85
    loss, st = grpo_loss(new, old, torch.tensor([1.0]), m, 0.2, "bnpo")
    assert float(loss) == pytest.approx(-(1.2 + 0.5) / 2)
    assert st["clip_ratio"] == pytest.approx(0.5)
    # A < 0: ratio 0.5 is clipped at 0.8 (loss 0.8), ratio 1.5 is not: (1.5 + 0.8) / 2
    loss, st = grpo_loss(new, old, torch.tensor([-1.0]), m, 0.2, "bnpo")
    assert float(loss) == pytest.approx((1.5 + 0.8) / 2)
    # k3 = exp(d) - d - 1 with d = ref - logp; zero where the policy equals the reference
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0]])
    loss, st = grpo_loss(logp, logp, torch.tensor([0.0]), m, 0.2, "bnpo", ref_logp=ref, beta=0.5)
    k3 = np.exp(1.0) - 1.0 - 1.0
    assert st["kl"] == pytest.approx(k3 / 2)
    assert float(loss) == pytest.approx(0.5 * k3 / 2)


def test_bnpo_equals_the_ppo_clipped_surrogate():
    rng = np.random.default_rng(3)
    B, T = 5, 6
    mask = torch.tensor(rng.random((B, T)) < 0.7, dtype=torch.float32)
    mask[:, 0] = 1
    logp = torch.tensor(-rng.random((B, T)) * 3, dtype=torch.float32) * mask
    old = (logp + torch.tensor(rng.normal(0, 0.3, (B, T)), dtype=torch.float32)) * mask
    adv = torch.tensor(rng.normal(size=B), dtype=torch.float32)
    ours, _ = grpo_loss(logp, old, adv, mask, 0.2, "bnpo")
    ppo, _ = clipped_surrogate(logp, old, adv[:, None].expand(B, T) * mask, mask, 0.2)
    assert float(ours) == pytest.approx(float(ppo), rel=1e-6)


def test_no_nan_at_large_log_ratios():
    mask = torch.ones(2, 3)
    logp = torch.tensor([[-0.1, -60.0, -0.5], [-30.0, -0.2, -1.0]], requires_grad=True)
    old = torch.tensor([[-50.0, -0.1, -0.5], [-0.1, -45.0, -1.0]])
    ref = torch.tensor([[-20.0, -0.1, -40.0], [-0.1, -30.0, -1.0]])
    for lt in ("grpo", "dr_grpo", "bnpo"):
        loss, st = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), mask, 0.2, lt, ref, 0.04, 3)
        (g,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss_type="ppo"), "loss_type must be one of"),
    (dict(clip_eps=0.0), "clip_eps must be in"),
    (dict(beta=0.1), "needs ref_logp"),
    (dict(loss_type="dr_grpo"), "needs max_completion_length"),
    (dict(advantages=torch.zeros(3)), "advantages has 3 entries"),
    (dict(mask=torch.zeros(2, 4)), "no response token"),
    (dict(old_logp=torch.zeros(2, 3)), "old_logp has shape"),
])
def test_grpo_loss_bad_input(kwargs, match):
    args = dict(logp=torch.zeros(2, 4), old_logp=torch.zeros(2, 4), advantages=torch.zeros(2),
                mask=torch.ones(2, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        grpo_loss(**args)


# ----------------------------------------------------------------------------- against TRL 1.16
def trl_advantages(rewards: torch.Tensor, G: int, scale_rewards: str):
    """TRL 1.16's advantage and zero-std flag, as written in _generate_and_score_completions."""
    pytest.importorskip("trl")
    from trl.trainer.utils import nanstd

    mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale_rewards in ("group", "none"):
        std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return adv, torch.isclose(std, torch.zeros_like(std))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("kind", ["binary", "continuous", "extreme"])
def test_advantages_match_trl(scale, kind):
    g = torch.Generator().manual_seed(1)
    G = 8
    if kind == "binary":
        r = (torch.rand(16 * G, generator=g) < 0.7).double()
    elif kind == "continuous":
        r = torch.randn(16 * G, generator=g, dtype=torch.float64)
    else:  # rewards of very different sizes, and groups that are constant
        r = torch.randn(16 * G, generator=g, dtype=torch.float64) * 1e6
        r[:G] = 3.0
        r[G: 2 * G] = -1e9
    theirs, zero = trl_advantages(r, G, scale)
    ours = group_advantages(r, G, scale)
    # 1e-6, not float64's 1e-15: TRL's nanstd divides two integer counts (Bessel's n / (n - 1)),
    # which torch does in float32, so its std carries a float32 rounding of that factor
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9)
    if scale != "batch":   # with scale_rewards="batch", TRL's flag tests the batch's std, not each group's
        assert np.array_equal(zero_std_groups(r, G), zero.view(-1, G)[:, 0].numpy())


def trl_grpo_loss(logp, old, ref, adv, mask, loss_type, beta, eps, L):
    """Run TRL 1.16's GRPOTrainer._compute_loss on given per-token log-probs."""
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, T = logp.shape
    identity = lambda x, *a, **k: x  # noqa: E731  (one process: reduce and gather change nothing)
    stand_in = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), loss_type=loss_type,
        epsilon_low=eps, epsilon_high=eps, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=L,
        _entropy_bonus_enabled=False, aux_loss_enabled=False,
        accelerator=SimpleNamespace(reduce=identity, gather=identity, gather_for_metrics=identity),
        _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = dict(prompt_ids=torch.zeros(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                  completion_ids=torch.zeros(B, T, dtype=torch.long), completion_mask=mask.long(),
                  advantages=adv, old_per_token_logps=old, ref_per_token_logps=ref)
    loss = GRPOTrainer._compute_loss(stand_in, None, inputs)
    return loss, {k: v[0] for k, v in stand_in._metrics["train"].items()}


def _random_rollout(seed, B=6, T=9, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lens[:, None]).double()
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    old = logp.detach() + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp.detach() + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04, 1.0])
@pytest.mark.parametrize("scale", [0.3, 8.0])   # 8 nats: far outside the clip range on most tokens
def test_loss_and_gradient_match_trl(loss_type, beta, scale):
    logp, old, ref, adv, mask = _random_rollout(int(beta * 100) + int(scale), scale=scale)
    L = mask.shape[1]
    theirs, metrics = trl_grpo_loss(logp, old, ref, adv, mask, loss_type, beta, 0.2, L)
    (g_theirs,) = torch.autograd.grad(theirs, logp)
    ours, stats = grpo_loss(logp, old, adv, mask, 0.2, loss_type, ref if beta else None, beta, L)
    (g_ours,) = torch.autograd.grad(ours, logp)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-10, abs=1e-12)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
    assert stats["clip_ratio"] == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    if beta:
        assert stats["kl"] == pytest.approx(metrics["kl"], rel=1e-6)


# ----------------------------------------------------------------------------- verifiers, config, a real run
def test_verifier_and_format_reward():
    w = make_world(0)
    p = "what is 3 plus 4?"
    ys = ["3 plus 4 is 7.", "sure! 3 plus 4 is 7.", "3 plus 4 is 8. i hope this helps.", "3 plus 5 is 7.", ""]
    assert verifier_reward(w, [p] * 5, ys) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward(w, [p] * 5, ys) == [1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        answer_first(w, "how do i make tea?", "3 plus 4 is 7.")


@pytest.mark.parametrize("kwargs, match", [
    (dict(group_size=1), "group_size must be >= 2"),
    (dict(loss_type="dapo"), "loss_type must be one of"),
    (dict(scale_rewards="std"), "scale_rewards must be one of"),
    (dict(prefill_per_group=2), "needs the prefill text"),
    (dict(prefill="sure!", prefill_per_group=9), "prefill_per_group must be in"),
    (dict(clip_eps=1.5), "clip_eps must be in"),
])
def test_config_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


@pytest.mark.parametrize("module, classes", [
    ("preflab.grpo", ("GRPOConfig", "GRPOSpeed")), ("preflab.kto", ("KTOConfig", "KTOSpeed")),
    ("preflab.orpo", ("ORPOConfig",)), ("preflab.online_dpo", ("OnlineDPOConfig",)),
])
def test_config_fields_have_docstrings(module, classes):
    """The trainers' configs follow one pattern: every field is followed by its one-line docstring."""
    import ast
    import importlib
    import inspect

    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            found.add(node.name)
            body = node.body
            fields = [i for i, stmt in enumerate(body) if isinstance(stmt, ast.AnnAssign)]
            assert fields, f"{node.name} has no fields"
            for i in fields:
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and \
                    isinstance(nxt.value.value, str) and len(nxt.value.value.strip().splitlines()) == 1, \
                    f"{node.name}.{body[i].target.id} has no one-line docstring"
    assert found == set(classes)


@pytest.fixture(scope="module")
def tiny():
    from preflab.model import load_policy
    from preflab.ppo import frozen_copy

    model, tok = load_policy("tiny")
    return model, frozen_copy(model), tok


def test_rollouts_prefill_is_outside_the_response_mask(tiny):
    model, _, tok = tiny
    w = make_world(0)
    prompts = [p for p in w.prompts_by_kind["arith"][:3] for _ in range(4)]
    cfg = GRPOConfig(group_size=4, prefill="sure!", prefill_per_group=2, max_new_tokens=12)
    texts, b = rollouts(model, tok, prompts, cfg, seed=0)
    assert len(texts) == 12 and b.input_ids.shape[0] == 12
    for i, t in enumerate(texts):
        assert t.startswith("sure!") == (i % 4 < 2)
        row = b.input_ids[i][b.attention_mask[i].bool()].tolist()
        prompt_part = tok.decode(row[: int(b.response_mask[i].argmax())])
        assert prompt_part.endswith("sure!") == (i % 4 < 2)
        assert prompt_part.startswith("User: " + prompts[i])


def test_a_short_run_raises_an_easy_reward_and_logs_per_step(tiny):
    model, ref, tok = tiny
    import copy

    policy = copy.deepcopy(model)
    w = make_world(0)
    # an easy reward: short responses score higher, so a few steps must raise it
    reward = lambda ps, rs: [-len(r.split()) / 10 for r in rs]  # noqa: E731
    cfg = GRPOConfig(steps=6, prompts_per_step=4, group_size=4, lr=1e-3, minibatch_size=8, max_new_tokens=24,
                     beta=0.04, seed=0, progress=False)
    seen = []
    hist = train_grpo(policy, tok, w.prompts_by_kind["arith"][:20], reward, cfg, reference=ref,
                      callback=lambda s, m: seen.append(s))
    assert len(hist) == cfg.steps + 1 and seen == list(range(cfg.steps + 1))
    assert np.mean([h["reward"] for h in hist[-2:]]) > hist[0]["reward"]
    for key in ("loss", "pg_loss", "kl_term", "clip_ratio", "grad_norm", "frac_reward_zero_std", "kl"):
        assert np.isfinite(hist[0][key])
    assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-4)   # the policy starts as the reference
    # a callback returning True stops training
    stopped = train_grpo(copy.deepcopy(model), tok, w.prompts_by_kind["arith"][:20], reward, cfg, reference=ref,
                         callback=lambda s, m: s == 1)
    assert len(stopped) == 2


def test_train_grpo_needs_a_reference_for_the_kl_term(tiny):
    model, _, tok = tiny
    with pytest.raises(ValueError, match="needs a reference"):
        train_grpo(model, tok, ["what is 1 plus 1?"], lambda p, r: [0.0] * len(r), GRPOConfig(beta=0.1))
    with pytest.raises(ValueError, match="reference is the policy"):
        train_grpo(model, tok, ["what is 1 plus 1?"], lambda p, r: [0.0] * len(r), GRPOConfig(), reference=model)


def test_config_manifest_records_the_seed_and_nested_settings(tiny, tmp_path):
    from preflab.model import RunManifest, config_manifest

    model, _, _ = tiny
    cfg = GRPOConfig(seed=7, beta=0.3)
    m = config_manifest("grpo-test", make_world(0), model, cfg, notes="verifier")
    back = RunManifest.read(m.write(tmp_path / "m.json"))
    assert back.seed == 7 and "seed" not in back.hyperparameters
    assert back.hyperparameters["beta"] == 0.3 and back.hyperparameters["speed"]["trim_padding"] is True
    assert back.notes == "verifier" and back.data_version == make_world(0).version_hash
