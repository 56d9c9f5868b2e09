"""The numbers each lesson runs with, per scale: one table that every lesson reads. Lesson 00.

A lesson asks for its row, ``S = lesson_settings("07")``, and takes its learning rates, steps, batch
sizes and evaluation sizes from it (``DPOConfig(lr=S.lr, batch_size=S.batch_size, ...)``), so no
lesson hard-codes the tiny model's numbers and the same notebook runs at ``PREFLAB_SCALE=gpt2``.
Printing ``S`` shows every value and where it came from.

* **tiny** (:data:`TINY`): the values every lesson's claims were measured with, on seeds 0-2.
* **gpt2**: derived from the tiny row by one rule, then :data:`GPT2_MEASURED` where a GPU run has
  replaced a derived value (none yet: no lesson has run at GPT-2 scale since the GPU fixes, so the
  check cells report their claims there instead of asserting them, :mod:`preflab.claims`). The rule:

  - a learning rate (a key ending in ``lr``) is divided by :data:`LR_RATIO` = 20, the ratio of the
    course's two SFT recipes (the tiny model's 1e-3 to GPT-2's 5e-5, :data:`preflab.model.GPT2_SFT`):
    a 124M pretrained model takes smaller steps than a 1M one;
  - every size (steps, batches, evaluation prompts) stays: a 16 GB GPU holds them at GPT-2 scale
    (no-grad scoring runs in chunks under 512 MiB of logits) and the lessons' statistics need them.

The other per-scale choices live where they act: dropout is off at both scales
(:func:`preflab.model.load_policy`), and "base" at GPT-2 scale is GPT-2 adapted to the world's text
(:func:`preflab.model.load_gpt2_base`), as the tiny base was pretrained on it.
"""

from __future__ import annotations

from types import MappingProxyType

from preflab import current_scale

__all__ = ["LR_RATIO", "TINY", "GPT2_MEASURED", "lesson_settings", "LessonSettings"]

#: How much smaller a learning rate is at GPT-2 scale than at tiny (1e-3 / 5e-5, the two SFT recipes).
LR_RATIO = 20.0

#: Each lesson's values at the tiny scale, as its claims were measured. Keys ending in ``lr`` are
#: learning rates; ``eval_*`` are numbers of held-out prompts; the rest are step and batch sizes.
TINY = {
    "00": dict(eval_prompts=256),
    "01": dict(steps=150, batch_size=32, lr=1e-3, eval_demos=512),
    "04": dict(n_train=6000, n_test=3000, epochs=1, batch_size=32, lr=1e-3),
    "05": dict(eval_prompts=48),
    "06": dict(steps=20, prompts_per_step=32, minibatch_size=16, ppo_epochs=2, lr=1e-4,
               eval_prompts=64, eval_arith=48),
    "07": dict(dpo_steps=24, batch_size=32, lr=3e-4, ppo_steps=12, prompts_per_step=48, minibatch_size=24,
               ppo_lr=3e-4, eval_prompts=192),
    "08": dict(n_pairs=1024, n_small=256, batch_size=32, rm_lr=1e-3, ppo_steps=12, prompts_per_step=64,
               minibatch_size=32, ppo_lr=6e-5, eval_prompts=320),
    "09": dict(steps=60, lr=2e-4, eval_prompts=160),
    "10": dict(steps=20, batch_size=32, lr=8e-5, eval_prompts=160),
    "12": dict(steps=15, prompts_per_step=32, minibatch_size=16, ppo_epochs=2, lr=3e-4, eval_prompts=32),
    "13": dict(epochs=2, batch_size=32, lr=1e-4, eval_safety=96, eval_prompts=192),
    "15": dict(steps=20, prompts_per_step=16, group_size=8, minibatch_size=64, lr=3e-4,
               ppo_prompts_per_step=128, ppo_lr=3e-4),
    "16": dict(rounds=4, prompts_per_round=128, batch_size=32, lr=3e-4, eval_prompts=256, eval_pairs=400),
    "17": dict(steps=16, batch_size=32, lr=3e-4, eval_prompts=256, eval_pairs=400),
    "18": dict(steps=16, batch_size=32, lr=3e-4, eval_prompts=256, eval_benign=96, eval_unsafe=64),
}

#: Values measured at GPT-2 scale on a GPU, replacing the derived ones: {lesson: {key: value}}.
GPT2_MEASURED: dict[str, dict] = {}


class LessonSettings:
    """One lesson's values at one scale, read as attributes (``S.lr``); ``str(S)`` lists them with their
    source. Read-only. Lesson 00."""

    def __init__(self, lesson: str, scale: str, values: dict, sources: dict):
        object.__setattr__(self, "lesson", lesson)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "values", MappingProxyType(dict(values)))
        object.__setattr__(self, "sources", MappingProxyType(dict(sources)))

    def __getattr__(self, key):
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(f"lesson {self.lesson} has no setting {key!r}: it has "
                                 f"{', '.join(self.values)} (preflab/settings.py)") from None

    def __setattr__(self, key, value):
        raise AttributeError(f"settings are read-only; change them in preflab/settings.py ({key!r})")

    def __str__(self):
        rows = ", ".join(f"{k}={v:g}" + ("" if self.sources[k] == "tiny" else f" ({self.sources[k]})")
                         for k, v in self.values.items())
        return f"lesson {self.lesson} at scale {self.scale}: {rows}"

    __repr__ = __str__


def lesson_settings(lesson: str, scale: str | None = None) -> LessonSettings:
    """Lesson ``lesson``'s values (``"07"``) at ``scale``, else ``$PREFLAB_SCALE``, else tiny: the tiny row,
    or at GPT-2 scale the measured value where there is one, else the derived one. Lesson 00."""
    scale = current_scale(scale)
    if lesson not in TINY:
        raise KeyError(f"no settings for lesson {lesson!r}: the table has {', '.join(TINY)} (preflab/settings.py)")
    values, sources = dict(TINY[lesson]), {k: "tiny" for k in TINY[lesson]}
    if scale == "gpt2":
        for k, v in values.items():
            if k.endswith("lr"):
                values[k], sources[k] = v / LR_RATIO, f"tiny {v:g} / {LR_RATIO:g}"
            else:
                sources[k] = "as tiny"
        for k, v in GPT2_MEASURED.get(lesson, {}).items():
            values[k], sources[k] = v, "measured on a GPU"
    return LessonSettings(lesson, scale, values, sources)
