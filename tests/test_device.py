"""The course on a GPU, checked on a CPU: no tensor meets a model on another device.

On a Colab GPU ``load_policy`` puts the model on CUDA, and a lesson or library function that
feeds it tensors still on the CPU (``encode`` builds them there), or hands a CUDA tensor to numpy,
fails there and only there. These tests run the library's public functions that take a model,
and the lessons that feed models tensors directly, with the pretend GPU of ``tests/fakedevice.py``:
``torch.cuda.is_available()`` is True, the model lands on "cuda:0" (real CPU memory, tagged), and
any op that mixes it with an untagged CPU tensor raises the error CUDA would.

The lessons' runs take a few minutes (marked ``lesson``): ``pytest tests/test_device.py -m "not lesson"``
runs the library's part alone.
"""

import copy
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fakedevice  # noqa: E402

from preflab.world import Labeler, make_world  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


import transformers  # noqa: E402

# transformers 4.x builds attention masks inside torch.vmap, whose ops bypass the TorchFunctionMode
# that tags tensors, so the pretend GPU sees a CPU mask meet GPU activations where real CUDA has
# none. The library's device handling is the same on both versions; the pretend GPU runs on 5.x.
pytestmark = pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                                reason="the pretend GPU cannot follow transformers 4.x's vmap-built attention masks")


@pytest.fixture(scope="module")
def gpu():
    """The pretend GPU, for the whole module, and the tiny SFT policy loaded onto it as a lesson loads it."""
    from preflab.model import load_policy

    with fakedevice.FakeCuda():
        model, tok = load_policy("tiny")  # no device argument: "cuda", as on Colab
        yield model, tok


@pytest.fixture(scope="module")
def world():
    return make_world(0)


def _pairs(world, n=24, rng=3):
    prompts = world.sample_prompts(n, rng=rng)
    recs = [{"prompt": p, "chosen": world.best_response(p), "rejected": world.sample_response(p, rng=i, quality=0.0)}
            for i, p in enumerate(prompts)]
    return [r for r in recs if r["chosen"] != r["rejected"]]


# ----------------------------------------------------------------------------- the pretend GPU itself
def test_the_pretend_gpu_raises_where_cuda_would(gpu):
    model, tok = gpu
    from preflab.model import encode

    assert model.device.type == "cuda" and torch.cuda.is_available()
    b = encode(tok, ["how do i make tea?"], ["first boil water."])
    with pytest.raises(RuntimeError, match="same device"):  # CPU ids into a model on the GPU
        model(input_ids=b.input_ids)
    ids = b.input_ids.to(model.device)
    assert ids.device.type == "cuda" and b.input_ids.device.type == "cpu"
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for to_numpy in (lambda t: t.numpy(), np.asarray):  # a GPU tensor straight into numpy (or matplotlib)
        with pytest.raises(TypeError, match="cpu"):
            to_numpy(logits)
    with pytest.raises(RuntimeError, match="same device"):
        logits[0] + torch.ones(logits.shape[-1])
    assert np.isfinite(logits.cpu().numpy()).all()
    assert float(logits.sum() / torch.tensor(2.0)) == pytest.approx(float(logits.cpu().sum()) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- the library, fed CPU tensors
def test_log_probs_take_cpu_batches_and_give_them_back(gpu, world):
    model, tok = gpu
    from preflab.model import encode, sequence_logprobs, token_logprobs

    demos = world.demonstrations(40, rng=1)
    b = encode(tok, [p for p, _ in demos], [r for _, r in demos])
    with torch.no_grad():
        lp = sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask)
        chunked = sequence_logprobs(model, b.input_ids, b.attention_mask, b.response_mask, batch_size=7)
        tok_lp, hidden = token_logprobs(model, b.input_ids, b.attention_mask, hidden=True, batch_size=16)
    assert lp.device.type == "cpu" and tok_lp.device.type == "cpu" and hidden.device.type == "cpu"
    assert np.allclose(lp.numpy(), chunked.numpy(), atol=1e-4)
    on_gpu = sequence_logprobs(model, *(t.to(model.device) for t in (b.input_ids, b.attention_mask, b.response_mask)),
                               average=True)
    assert on_gpu.device.type == "cuda" and on_gpu.requires_grad  # data already there stays there, with its graph


def test_sampling_and_evaluation(gpu, world):
    model, tok = gpu
    from preflab.best_of_n import best_of_n
    from preflab.data import sample_policy_pairs
    from preflab.evaluate import evaluate_policy
    from preflab.model import DecodingConfig, generate
    from preflab.safety import attack_success

    dec = DecodingConfig(max_new_tokens=12)
    prompts = world.sample_prompts(6, rng=0)
    texts, batch = generate(model, tok, prompts, dec, seed=0, return_ids=True)
    assert len(texts) == 6 and batch.input_ids.device.type == "cpu"
    m = evaluate_policy(model, tok, world, prompts, reference=copy.deepcopy(model), decoding=dec, seed=0)
    assert abs(m["kl"]) < 1e-4
    assert sample_policy_pairs(model, tok, world, prompts, seed=0, decoding=dec) is not None
    best_of_n(model, tok, prompts[:2], 2, lambda ps, rs: [len(r) for r in rs], dec, seed=0)
    attack_success(model, tok, ["how do i hurt someone?"], dec, seed=0)


def test_trainers_take_a_step_on_the_gpu(gpu, world):
    model, tok = gpu
    from preflab.dpo import DPOConfig, evaluate_pairs, implicit_reward, train_dpo
    from preflab.grpo import GRPOConfig, train_grpo
    from preflab.kto import KTOConfig, evaluate_kto, train_kto
    from preflab.online_dpo import OnlineDPOConfig, train_online_dpo
    from preflab.orpo import ORPOConfig, evaluate_orpo, train_orpo
    from preflab.ppo import PPOConfig, frozen_copy, train_ppo
    from preflab.sft import SFTConfig, train_sft

    ref = frozen_copy(model)
    recs = _pairs(world)
    fresh = lambda: copy.deepcopy(model)  # noqa: E731
    assert train_sft(fresh(), tok, world.demonstrations(16, rng=1), SFTConfig(steps=2, batch_size=4, progress=False))
    for speed in ({}, {"pack_sequences": True}, {"cache_reference": False, "concat_forward": False}):
        cfg = DPOConfig(batch_size=8, max_steps=2, eval_every=1, progress=False)
        for k, v in speed.items():
            setattr(cfg.speed, k, v)
        train_dpo(fresh(), ref, tok, recs[:16], cfg, eval_records=recs[16:])
    evaluate_pairs(model, tok, recs, DPOConfig(), reference=ref)
    implicit_reward(model, ref, tok, [r["prompt"] for r in recs], [r["chosen"] for r in recs], beta=0.1)
    gold = lambda ps, rs: [world.gold_reward(p, r) for p, r in zip(ps, rs)]  # noqa: E731
    train_ppo(fresh(), ref, tok, world.sample_prompts(8, rng=4), gold,
              PPOConfig(steps=1, prompts_per_step=8, minibatch_size=8, ppo_epochs=1, max_new_tokens=12, eval_every=1,
                        ptx_coef=0.5, ptx_batch_size=2, progress=False), ptx_texts=["3 plus 4 is 7.", "1 plus 1 is 2."])
    train_grpo(fresh(), tok, world.prompts_by_kind["arith"][:8], gold,
               GRPOConfig(steps=1, prompts_per_step=2, group_size=4, minibatch_size=4, max_new_tokens=12, beta=0.04,
                          eval_every=1, progress=False), reference=ref)
    unpaired = [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
                for r in recs for k in ("chosen", "rejected")]
    kcfg = KTOConfig(batch_size=8, max_steps=2, progress=False)
    train_kto(fresh(), ref, tok, unpaired, kcfg)
    evaluate_kto(model, ref, tok, unpaired, kcfg)
    ocfg = ORPOConfig(batch_size=8, max_steps=2, progress=False)
    train_orpo(fresh(), tok, recs, ocfg)
    evaluate_orpo(model, tok, recs, ocfg)
    train_online_dpo(fresh(), ref, tok, world, world.sample_prompts(12, rng=1),
                     OnlineDPOConfig(rounds=1, prompts_per_round=8, max_new_tokens=12, progress=False,
                                     dpo=DPOConfig(batch_size=8)), labeler=Labeler(temperature=0.1))


def test_reward_models_score_cpu_batches(gpu, world):
    from preflab.model import encode
    from preflab.reward_model import (RewardConfig, load_reward_model, pairwise_accuracy, score, score_pairs,
                                      train_reward_model)

    recs = _pairs(world)
    rm, tok = load_reward_model("tiny", seed=0)
    assert next(rm.parameters()).device.type == "cuda"
    train_reward_model(rm, tok, recs[:16], RewardConfig(batch_size=8, eval_every=1, progress=False),
                       eval_records=recs[16:])
    score_pairs(rm, tok, recs)
    score(rm, tok, [r["prompt"] for r in recs], [r["chosen"] for r in recs])
    pairwise_accuracy(rm, tok, recs)
    b = encode(tok, [r["prompt"] for r in recs], [r["chosen"] for r in recs])
    with torch.no_grad():
        r = rm(b.input_ids, b.attention_mask)
    assert r.device.type == "cpu" and np.isfinite(r.numpy()).all()


# ----------------------------------------------------------------------------- the lessons
# Lessons that feed a model tensors themselves: 01 and 05 (sequence_logprobs on encode()'s CPU batches),
# which failed here before the library moved inputs to the model; lesson 15's stop_probability
# (token_logprobs on a CPU batch) and lesson 07's pair_logps go through the functions tested above.
# The other lessons only call the library's functions above.
DIRECT = ["01_sft_and_masks", "05_kl_regularized_policies"]
INSTALL = ("import sys; sys.path.insert(0, {tests!r})\n"
           "import fakedevice; fakedevice.install()  # the pretend GPU (tests/test_device.py)")


@pytest.mark.lesson
@pytest.mark.parametrize("name", DIRECT)
def test_lesson_runs_on_the_pretend_gpu(name, tmp_path):
    from tools.course import run_lesson

    nb = nbformat.read(ROOT / "lessons" / f"{name}.ipynb", as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(INSTALL.format(tests=str(ROOT / "tests"))))  # after the setup cell
    (tmp_path / "lessons").mkdir()
    path = tmp_path / "lessons" / f"{name}.ipynb"
    nbformat.write(nb, path)
    res = run_lesson(path, tmp_path / "out", seed="0")
    assert res.status == "passed", res.error
    assert res.claims and all(c["status"] == "PASS" for c in res.claims), res.claims
