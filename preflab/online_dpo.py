"""Online (iterative) DPO: fresh pairs from the current policy every round (Lesson 16).

Offline DPO trains on pairs sampled once, from the SFT model. As the policy moves, those pairs
describe less and less of what it now writes: the loss keeps pushing on responses the policy no
longer samples. Online DPO (Guo et al. 2024, "Direct language model alignment from online AI
feedback"; also Xu et al. 2023's iterative DPO) closes the loop. Each round r = 1..R:

    1. sample two responses y, y' ~ pi_r(. | x) for each of the round's prompts x
       (pi_r: the policy as it is at the start of round r);
    2. a labeler says which it prefers: (x, y_w, y_l);
    3. take DPO steps on these pairs only, against the fixed reference pi_ref (the SFT model):

       L = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

with log-probs SUMMED over response tokens (EOS included); a higher beta keeps the policy closer to
pi_ref. The label budget is rounds * prompts_per_round comparisons. With ``on_policy=False`` the
same loop samples every round from the reference instead: offline pairs, the same number of
labels, the same steps, so the two runs differ only in who wrote the responses.

Each round's training is :func:`preflab.dpo.train_dpo` on that round's pairs (its optimizer
starts fresh each round, as each round of iterative DPO is a new DPO run from the current policy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from preflab.dpo import DPOConfig, sample_policy_pairs, train_dpo
from preflab.model import DecodingConfig

__all__ = ["OnlineDPOConfig", "train_online_dpo", "config_dict"]


@dataclass
class OnlineDPOConfig:
    """Every setting of one online (or, with on_policy=False, offline) DPO run (Lesson 16)."""

    rounds: int = 4
    """sample-label-train rounds"""
    prompts_per_round: int = 128
    """prompts sampled per round, each giving at most one labelled pair (identical sides are dropped)"""
    epochs_per_round: int = 1
    """passes of DPO over each round's pairs"""
    on_policy: bool = True
    """True: sample each round from the current policy (online); False: from the reference (offline)"""
    max_new_tokens: int = 40
    """generation limit when sampling pairs"""
    temperature: float = 1.0
    """sampling temperature when sampling pairs"""
    seed: int = 0
    """seeds prompt order, sampling and labels (round r uses seed * 1000 + r)"""
    progress: bool = True
    """Show a tqdm progress bar."""
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(beta=0.1, lr=3e-4, batch_size=32))
    """the DPO settings of each round's training (loss, beta, lr, batch size, speed switches)"""

    def __post_init__(self):
        for name in ("rounds", "prompts_per_round", "epochs_per_round", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"OnlineDPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"OnlineDPOConfig.temperature must be > 0, got {self.temperature}")
        if not self.dpo.needs_reference:
            raise ValueError("online DPO here uses a reference-based loss; pick a DPOConfig.loss_type other than 'simpo'")
        if self.dpo.max_steps is not None:
            raise ValueError("set OnlineDPOConfig.epochs_per_round, not DPOConfig.max_steps (each round runs "
                             "epochs_per_round passes over its own pairs)")


def config_dict(cfg: OnlineDPOConfig) -> dict:
    """The config as a plain (nested) dict, for run manifests (Lesson 16)."""
    return asdict(cfg)


def train_online_dpo(policy, reference, tokenizer, world, prompts: Sequence[str], cfg: OnlineDPOConfig = OnlineDPOConfig(),
                     labeler=None, eval_fn: Callable[[torch.nn.Module], dict] | None = None,
                     callback: Callable[[int, dict], bool | None] | None = None) -> list[dict]:
    """Train ``policy`` in place with online DPO (``cfg.on_policy``) or its offline control (Lesson 16).

    prompts: the pool; each round draws ``prompts_per_round`` of them without replacement while
        the pool lasts (then it is reshuffled), so the two runs see the same prompts in the same order.
    labeler: a :class:`preflab.world.Labeler` or ``LabelerPool`` (default: the world's).
    eval_fn(policy) -> dict, called after each round; its keys are added to that round's last row.
    callback(step, row) after every DPO step (step counts across rounds); returning True stops.

    Returns one dict per DPO step: :func:`preflab.dpo.train_dpo`'s metrics plus ``round``,
    ``global_step``, ``labels`` (comparisons labelled so far), ``round_pairs``, and on the last step
    of each round ``round_policy_version`` (the parameter hash of the model that wrote the round's
    responses), ``round_gold_chosen`` / ``round_gold_rejected`` (mean gold of that round's pairs,
    for analysis: the labeler never reveals it) and whatever eval_fn returned.
    """
    if len(prompts) == 0:
        raise ValueError("train_online_dpo needs a non-empty prompt pool")
    if reference is None or reference is policy:
        raise ValueError("online DPO needs a frozen reference separate from the policy (preflab.ppo.frozen_copy(sft))")
    rng = np.random.default_rng(cfg.seed)
    decoding = DecodingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    pool, order, pos = list(prompts), rng.permutation(len(prompts)), 0
    history: list[dict] = []
    labels, global_step, stop = 0, 0, False
    for r in range(cfg.rounds):
        # ---- 1. this round's prompts (the same sequence for online and offline runs)
        if pos + cfg.prompts_per_round > len(pool):
            order, pos = rng.permutation(len(pool)), 0
        round_prompts = [pool[i] for i in order[pos: pos + cfg.prompts_per_round]]
        pos += cfg.prompts_per_round
        # ---- 2. sample two responses each, from the current policy (online) or the reference (offline), and label
        sampler = policy if cfg.on_policy else reference
        pairs = sample_policy_pairs(sampler, tokenizer, world, round_prompts, labeler,
                                    seed=cfg.seed * 1000 + r, decoding=decoding)
        if not pairs:
            raise ValueError(f"round {r}: every sampled pair was empty or identical; nothing to label")
        labels += len(pairs)
        # ---- 3. DPO on this round's pairs against the fixed reference
        steps = cfg.epochs_per_round * -(-len(pairs) // cfg.dpo.batch_size)
        dcfg = replace(cfg.dpo, max_steps=steps, seed=cfg.seed * 1000 + r, progress=cfg.progress)

        def on_step(step, m, r=r, n_pairs=len(pairs)):
            nonlocal global_step, stop
            m.update({"round": r, "global_step": global_step, "labels": labels, "round_pairs": n_pairs})
            global_step += 1
            stop = bool(callback(m["global_step"], m)) if callback is not None else False
            return stop

        rows = train_dpo(policy, reference, tokenizer, pairs, dcfg, callback=on_step)
        rows[-1]["round_policy_version"] = pairs[0]["policy_version"]   # who wrote this round's responses
        rows[-1]["round_gold_chosen"] = float(np.mean([p["gold_chosen"] for p in pairs]))
        rows[-1]["round_gold_rejected"] = float(np.mean([p["gold_rejected"] for p in pairs]))
        if eval_fn is not None:
            rows[-1].update(eval_fn(policy))
        history.extend(rows)
        if stop:
            break
    policy.eval()
    return history
