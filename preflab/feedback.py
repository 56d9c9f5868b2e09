"""The feedback loop: versioned rubrics and releases, reviewer calibration, and feedback intake.

Preference labels are judgments made under a written policy (the rubric). Three things keep
them usable over time:

1. **Version the policy text, the rubric, the data and the model together.** A label means
   "y_w is better than y_l *under rubric v*". If the rubric changes and its version does not,
   labels from before and after are mixed as if they meant the same thing.
   :class:`Rubric` hashes its content; :class:`VersionRegistry` refuses a version string
   that comes back with different content, and ties the four versions into one release.
2. **Calibrate reviewers.** Seed the queue with gold tasks (items whose answer is known),
   estimate each reviewer's accuracy a_r on them, overlap reviewers on the same items and
   combine their votes with log-odds weights

       w_r = log(a_r / (1 - a_r)),   decide "first" iff  sum_r w_r * (2 * label_r - 1) > 0,

   which is the most likely label when reviewers err independently with accuracy a_r and,
   before any vote, either side is equally likely to be better; otherwise the exact rule adds
   the prior log-odds log(pi / (1 - pi)) to the sum, with pi the prior probability that the
   first side is better (:func:`weighted_vote` uses the plain sum). A reviewer at chance gets
   weight 0. Items the weighted vote leaves split go to an adjudicator.
3. **Admit feedback with provenance and consent.** A feedback event enters the next data
   version only if the user consented and the event says which policy and rubric produced it;
   everything else is rejected with a reason (:func:`ingest_feedback`).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

import preflab.world as world_module  # RUBRIC is read at call time: Rubric.active() swaps it
from preflab.pairs import PROVENANCE_FIELDS, dataset_hash, find_problems
from preflab.world import FILLER, parse_response, sigmoid

__all__ = ["Rubric", "RubricLabeler", "VersionError", "VersionRegistry", "content_hash",
           "estimate_accuracy", "vote_weights", "weighted_vote", "FeedbackEvent", "IngestResult",
           "ingest_feedback"]


def content_hash(obj) -> str:
    """A 16-hex sha256 of any JSON-able object (keys sorted), or of a string's bytes. Lesson 14."""
    blob = obj.encode() if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- rubrics
@dataclass(frozen=True)
class Rubric:
    """A written rubric: its version string, its text, and the weights the gold reward uses.

    ``weights`` has the keys of ``preflab.world.RUBRIC`` (missing keys keep the world's values).
    ``hash`` covers text and weights, so editing either one changes it even if ``version`` does not.

    Lesson 14.
    """

    version: str
    weights: Mapping[str, float]
    text: str = ""

    @classmethod
    def from_world(cls, text: str = "") -> "Rubric":
        """The rubric the world's gold reward uses now (``preflab.world.RUBRIC``)."""
        rubric = world_module.RUBRIC
        w = {k: v for k, v in rubric.items() if k != "version"}
        return cls(rubric["version"], w, text)

    def revised(self, version: str, text: str | None = None, **changes: float) -> "Rubric":
        """A new rubric with some weights changed (pass the same ``version`` to simulate a silent edit)."""
        rubric = world_module.RUBRIC
        unknown = set(changes) - set(rubric)
        if unknown:
            raise ValueError(f"unknown rubric weights {sorted(unknown)}; known: {sorted(k for k in rubric if k != 'version')}")
        return Rubric(version, {**self.weights, **changes}, self.text if text is None else text)

    @property
    def hash(self) -> str:
        return content_hash({"text": self.text, "weights": dict(self.weights)})

    @contextmanager
    def active(self):
        """Inside this block the world's gold reward scores with these weights.

        (The world reads the module-level ``preflab.world.RUBRIC``; this swaps it and always
        restores it, even on error.)
        """
        old = world_module.RUBRIC
        world_module.RUBRIC = {**old, **self.weights, "version": self.version}
        try:
            yield self
        finally:
            world_module.RUBRIC = old

    def score(self, world, prompt: str, response: str) -> float:
        """The gold reward of ``response`` under this rubric's weights.

        The ``filler`` weight is credit per filler sentence. (If the world's gold reward does not
        read that weight itself, it is added here, so a rubric can pay for politeness.)
        """
        with self.active():
            g = world.gold_reward(prompt, response)
            if not _world_reads_filler(world):
                g += float(self.weights.get("filler", 0.0)) * parse_response(response).filler
            return g


_READS_FILLER: dict = {}


def _world_reads_filler(world) -> bool:
    """Does the world's gold reward use RUBRIC["filler"]? (Probed once by changing it.)"""
    if "v" not in _READS_FILLER:
        prompt = world.prompts_by_kind["howto"][0]
        old = world_module.RUBRIC
        try:
            world_module.RUBRIC = {**old, "filler": 0.0}
            a = world.gold_reward(prompt, FILLER[0])
            world_module.RUBRIC = {**old, "filler": 1.0}
            b = world.gold_reward(prompt, FILLER[0])
        finally:
            world_module.RUBRIC = old
        _READS_FILLER["v"] = a != b
    return _READS_FILLER["v"]


@dataclass(frozen=True)
class RubricLabeler:
    """A Bradley-Terry labeler who applies ``rubric``: P(first) = sigma((g_R(first) - g_R(second)) / T),
    with g_R the gold reward under the rubric's weights. ``flip_prob`` flips the label outright. Lesson 14."""

    rubric: Rubric
    temperature: float = 0.25
    flip_prob: float = 0.0
    name: str = "labeler"

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.flip_prob <= 0.5:
            raise ValueError(f"flip_prob must be in [0, 0.5], got {self.flip_prob}")

    def prob_first(self, world, prompt: str, first: str, second: str) -> float:
        z = (self.rubric.score(world, prompt, first) - self.rubric.score(world, prompt, second)) / self.temperature
        s = sigmoid(z)
        return (1 - self.flip_prob) * s + self.flip_prob * (1 - s)

    def label(self, world, prompt: str, first: str, second: str, rng: np.random.Generator) -> int:
        return int(rng.random() < self.prob_first(world, prompt, first, second))


# ----------------------------------------------------------------------------- versions
class VersionError(ValueError):
    """Versions that do not fit together: a silent edit, an unknown version, or mixed rubrics. Lesson 14."""


@dataclass
class VersionRegistry:
    """Remembers the content hash of every (kind, version) it has seen and ties releases together.

    kinds: "policy_text", "rubric", "data", "model" (any string works).

    Lesson 14.
    """

    entries: dict = field(default_factory=dict)
    releases: list = field(default_factory=list)

    def register(self, kind: str, version: str, content) -> str:
        """Record that ``kind`` at ``version`` has this content; returns its hash.

        Registering the same version again with the same content is fine; with different
        content it raises :class:`VersionError`: the content changed without a new version.
        """
        if not version or not isinstance(version, str):
            raise VersionError(f"{kind} needs a non-empty version string, got {version!r}")
        h = content.hash if isinstance(content, Rubric) else content_hash(content)
        key = (kind, version)
        if key in self.entries and self.entries[key] != h:
            raise VersionError(f"{kind} version {version!r} was registered with content {self.entries[key]} "
                               f"and now has content {h}: it changed without a new version. "
                               f"Give the edited {kind} a new version string and register that.")
        self.entries[key] = h
        return h

    def is_registered(self, kind: str, version: str) -> bool:
        return (kind, version) in self.entries

    def release(self, name: str, *, policy_text: tuple[str, str], rubric: Rubric,
                data: tuple[str, Sequence[Mapping]], model: tuple[str, str]) -> dict:
        """Register the four parts and return a release manifest naming each version and hash.

        policy_text=(version, text), rubric=Rubric, data=(version, records), model=(version, hash or path).
        """
        manifest = {"release": name,
                    "policy_text": {"version": policy_text[0], "hash": self.register("policy_text", *policy_text)},
                    "rubric": {"version": rubric.version, "hash": self.register("rubric", rubric.version, rubric)},
                    "data": {"version": data[0], "hash": self.register("data", data[0], dataset_hash(data[1])),
                             "rows": len(data[1])},
                    "model": {"version": model[0], "hash": self.register("model", model[0], model[1])}}
        rubrics_in_data = sorted({str(r.get("rubric_version")) for r in data[1]})
        if rubrics_in_data != [rubric.version]:
            raise VersionError(f"release {name!r}: the data carries rubric versions {rubrics_in_data} but the "
                               f"release names rubric {rubric.version!r}; relabel or split the data by rubric")
        self.releases.append(manifest)
        return manifest

    def check_records(self, records: Sequence[Mapping], rubric: Rubric) -> None:
        """Raise :class:`VersionError` listing rows whose rubric version is not ``rubric``'s, or
        whose recorded ``rubric_hash`` (if any) differs from the rubric's content hash."""
        bad = []
        for i, r in enumerate(records):
            if r.get("rubric_version") != rubric.version:
                bad.append(f"row {i}: rubric_version {r.get('rubric_version')!r}, expected {rubric.version!r}")
            elif "rubric_hash" in r and r["rubric_hash"] != rubric.hash:
                bad.append(f"row {i}: labelled under rubric {rubric.version!r} with content {r['rubric_hash']}, "
                           f"but rubric {rubric.version!r} now has content {rubric.hash} (a silent edit)")
        if bad:
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise VersionError(f"{len(bad)} record(s) do not match rubric {rubric.version!r}:\n  "
                               + "\n  ".join(bad[:20]) + more)


# ----------------------------------------------------------------------------- reviewers
def estimate_accuracy(labels, truth, prior: tuple[float, float] = (1.0, 1.0)) -> float:
    """A reviewer's accuracy on gold tasks, smoothed with a Beta prior:
    (correct + prior[0]) / (n + prior[0] + prior[1]). ``labels``/``truth`` are 0/1 arrays. Lesson 14."""
    y, t = np.asarray(labels), np.asarray(truth)
    if y.shape != t.shape or y.ndim != 1:
        raise ValueError(f"labels and truth must be 1-D and the same length, got {y.shape} and {t.shape}")
    if y.size == 0:
        raise ValueError("no gold tasks: seed the review queue with items whose answer is known")
    return float((np.sum(y == t) + prior[0]) / (y.size + prior[0] + prior[1]))


def vote_weights(accuracies, floor: float = 0.5, cap: float = 0.99) -> np.ndarray:
    """Log-odds weights w_r = log(a_r / (1 - a_r)); accuracies at or below ``floor`` get weight 0. Lesson 14."""
    a = np.clip(np.asarray(accuracies, dtype=float), 1e-6, cap)
    w = np.log(a / (1 - a))
    return np.where(a > floor, w, 0.0)


def weighted_vote(labels, weights) -> tuple[np.ndarray, np.ndarray]:
    """Combine 0/1 labels (shape (items, reviewers), -1 where a reviewer did not label the item).

    Returns ``(decision, score)``: score = sum_r w_r * (2 * label_r - 1) over the reviewers who
    labelled the item, decision = 1 where score > 0, 0 where score < 0, -1 where score == 0 (a
    split vote: send it to adjudication).

    Lesson 14.
    """
    L = np.asarray(labels)
    w = np.asarray(weights, dtype=float)
    if L.ndim != 2 or L.shape[1] != len(w):
        raise ValueError(f"labels must have shape (items, reviewers) = (n, {len(w)}), got {L.shape}")
    if not np.isin(L, (-1, 0, 1)).all():
        raise ValueError("labels must be 0, 1, or -1 for 'not labelled'")
    signed = np.where(L < 0, 0.0, 2.0 * L - 1.0)
    score = signed @ w
    decision = np.where(np.isclose(score, 0.0), -1, (score > 0).astype(int))
    return decision, score


# ----------------------------------------------------------------------------- feedback intake
@dataclass
class FeedbackEvent:
    """One piece of user or reviewer feedback: a preference between two responses.

    ``consent`` is True only if the user agreed that this exchange may be used for training;
    None means nobody asked (which is not consent).

    Lesson 14.
    """

    event_id: str
    prompt: str
    chosen: str
    rejected: str
    consent: bool | None = None
    source: str = ""
    labeler: str = ""
    policy_version: str = ""
    rubric_version: str = ""


@dataclass
class IngestResult:
    """What :func:`ingest_feedback` did: the new records, the rejected events with reasons,
    and the data versions before and after. Lesson 14."""

    records: list
    accepted: list
    rejected: list
    old_version: str
    new_version: str


def ingest_feedback(events: Sequence[FeedbackEvent | Mapping], base_records: Sequence[Mapping],
                    registry: VersionRegistry, rubric: Rubric) -> IngestResult:
    """Admit feedback events into the next data version, or reject each with a reason.

    An event is rejected when: consent is not True ("no consent recorded" / "user declined");
    a provenance field (source, labeler, policy_version, rubric_version) is empty; its
    policy_version is not registered as a model in ``registry``; its rubric_version is not the
    current ``rubric``; or the pair itself is invalid (empty or identical sides, a duplicate).
    Accepted events become records with provenance (``source``, ``event_id``, ``data_version``
    set to the new version). ``base_records`` are not modified.

    Lesson 14.
    """
    old_version = dataset_hash(base_records)
    accepted, rejected = [], []
    seen = {(r["prompt"], r["chosen"], r["rejected"]) for r in base_records}
    for ev in events:
        e = asdict(ev) if isinstance(ev, FeedbackEvent) else dict(ev)
        eid = e.get("event_id", "?")
        reasons = []
        if e.get("consent") is None:
            reasons.append("no consent recorded")
        elif e.get("consent") is not True:
            reasons.append("user declined consent")
        for f in ("source", "labeler", "policy_version", "rubric_version"):
            if not e.get(f):
                reasons.append(f"missing provenance: {f}")
        pv, rv = e.get("policy_version"), e.get("rubric_version")
        if pv and not registry.is_registered("model", pv):
            reasons.append(f"policy_version {pv!r} is not a registered model")
        if rv and rv != rubric.version:
            reasons.append(f"rubric_version {rv!r} is not the current rubric {rubric.version!r}")
        rec = {"prompt": e.get("prompt"), "chosen": e.get("chosen"), "rejected": e.get("rejected"),
               "labeler": e.get("labeler"), "policy_version": pv, "rubric_version": rv,
               "data_version": "pending", "source": e.get("source"), "event_id": eid}
        reasons += [msg for _, msg in find_problems([rec], require_provenance=False)]
        key = (rec["prompt"], rec["chosen"], rec["rejected"])
        if not reasons and key in seen:
            reasons.append("duplicate of a record already in the data")
        if reasons:
            rejected.append((eid, "; ".join(reasons)))
        else:
            seen.add(key)
            accepted.append(rec)
    new_records = [dict(r) for r in base_records] + accepted
    new_version = dataset_hash([{k: v for k, v in r.items() if k != "data_version"} for r in new_records])
    for r in accepted:
        r["data_version"] = new_version
    return IngestResult(records=new_records, accepted=accepted, rejected=rejected,
                        old_version=old_version, new_version=new_version)


# keep PROVENANCE_FIELDS importable from here for lessons that only import feedback
PROVENANCE = PROVENANCE_FIELDS
