"""Preference pairs: the record (x, y_w, y_l), its provenance, validation, splits, versions, I/O.

A preference record says that for prompt x a labeler preferred response y_w ("chosen") to
y_l ("rejected"). On its own that triple is not enough to train on responsibly; each record
also carries its provenance, so that a result can be traced back and a bad batch removed:

    prompt, chosen, rejected            the comparison itself (x, y_w, y_l)
    labeler                             who (or which simulated labeler) judged it
    policy_version                      which policy (or grammar) wrote the two responses
    rubric_version                      which written rubric the labeler followed
    data_version                        the version of the data set the record was made for

The records are plain dicts (the format of ``World.preference_pairs`` and of TRL's
prompt/chosen/rejected data sets, plus provenance), so they travel through JSONL and
``datasets`` without conversion.

Splits must be made **by prompt**: if one prompt's pairs land in both train and test, a model
that memorizes prompts looks better on the test split than it will on new prompts.
:func:`split_by_prompt` puts all of a prompt's pairs in one split; :func:`check_leakage` measures
how many test prompts (and rows) also occur in train.

Label noise is measured from **overlapping labels** (two labelers judge the same comparisons):
observed agreement p_o, and Cohen's kappa

    kappa = (p_o - p_e) / (1 - p_e),   p_e = sum_c P_1(c) P_2(c)

the agreement beyond what the two labelers' marginal rates would give by chance. For two
independent Bradley-Terry labelers who each prefer the first response with probability p,
the expected agreement is  E[p^2 + (1 - p)^2]  (:func:`predicted_agreement`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from preflab.world import as_rng

__all__ = [
    "PAIR_FIELDS", "PROVENANCE_FIELDS", "REQUIRED_FIELDS", "PairValidationError",
    "make_record", "find_problems", "validate_pairs", "filter_valid", "drop_empty", "record_hash", "dataset_hash",
    "split_by_prompt", "split_by_row", "check_leakage",
    "save_jsonl", "load_jsonl", "to_trl", "from_trl", "to_dataset", "load_pairs_dataset",
    "relabel", "agreement", "cohens_kappa", "predicted_agreement",
]

PAIR_FIELDS = ("prompt", "chosen", "rejected")
PROVENANCE_FIELDS = ("labeler", "policy_version", "rubric_version", "data_version")
REQUIRED_FIELDS = PAIR_FIELDS + PROVENANCE_FIELDS


class PairValidationError(ValueError):
    """A preference data set failed validation. ``problems`` lists (row index, message) for
    every problem found, not just the first, so one run shows everything to fix. Lesson 02."""

    def __init__(self, problems: list[tuple[int | None, str]]):
        self.problems = list(problems)
        lines = [f"  row {i}: {msg}" if i is not None else f"  {msg}" for i, msg in self.problems[:50]]
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the preference data:\n" + "\n".join(lines) + more)


def make_record(prompt: str, chosen: str, rejected: str, *, labeler: str, policy_version: str,
                rubric_version: str, data_version: str, **extra) -> dict:
    """One preference record (x, y_w, y_l) with its provenance; ``extra`` keys are kept as they are. Lesson 02."""
    rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "labeler": labeler,
           "policy_version": policy_version, "rubric_version": rubric_version, "data_version": data_version}
    rec.update(extra)
    return rec


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def find_problems(records: Sequence[Mapping], *, require_provenance: bool = True,
                  split_field: str = "split") -> list[tuple[int | None, str]]:
    """Every problem in ``records`` as (row index, message), sorted by row; [] if none.
    The checks are those of :func:`validate_pairs`. Lesson 02."""
    if isinstance(records, (str, bytes)) or not hasattr(records, "__len__"):
        raise TypeError("validate_pairs takes a list of records (dicts), e.g. from load_jsonl()")
    problems: list[tuple[int | None, str]] = []
    required = REQUIRED_FIELDS if require_provenance else PAIR_FIELDS
    seen: dict[tuple, int] = {}
    splits_of_prompt: dict[str, dict[str, int]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            problems.append((i, f"is a {type(rec).__name__}, not a dict with fields {list(REQUIRED_FIELDS)}"))
            continue
        missing = [f for f in required if f not in rec]
        if missing:
            problems.append((i, f"missing field(s) {missing}"))
        for f in required:
            if f in rec and f in PAIR_FIELDS and not isinstance(rec[f], str):
                problems.append((i, f"field {f!r} must be a string, got {type(rec[f]).__name__}"))
            elif f in rec and _blank(rec[f]):
                side = " (an empty side: every response needs text)" if f in ("chosen", "rejected") else ""
                problems.append((i, f"field {f!r} is empty{side}"))
        c, r = rec.get("chosen"), rec.get("rejected")
        if isinstance(c, str) and isinstance(r, str) and c.strip() and " ".join(c.split()) == " ".join(r.split()):
            problems.append((i, "chosen and rejected are identical: the pair carries no preference"))
        key = tuple(rec.get(f) for f in PAIR_FIELDS)
        if all(isinstance(k, str) for k in key):
            if key in seen:
                problems.append((i, f"exact duplicate of row {seen[key]}"))
            else:
                seen[key] = i
        if split_field in rec and isinstance(rec.get("prompt"), str):
            splits_of_prompt.setdefault(rec["prompt"], {}).setdefault(str(rec[split_field]), i)
    for prompt, where in splits_of_prompt.items():
        if len(where) > 1:
            rows = ", ".join(f"{s} (row {i})" for s, i in sorted(where.items(), key=lambda kv: kv[1]))
            problems.append((min(where.values()), f"prompt {prompt!r} leaks across splits: {rows}. "
                                                  f"Split by prompt with split_by_prompt()"))
    problems.sort(key=lambda p: (p[0] is None, p[0] if p[0] is not None else 0))
    return problems


def validate_pairs(records: Sequence[Mapping], *, require_provenance: bool = True,
                   split_field: str = "split") -> Sequence[Mapping]:
    """Check a list of preference records and raise :class:`PairValidationError` listing every problem.

    Checked, per row: the record is a mapping; ``prompt``/``chosen``/``rejected`` are present
    and non-empty strings; the two sides differ (after whitespace normalization); the provenance
    fields (``labeler``, ``policy_version``, ``rubric_version``, ``data_version``) are present
    and non-empty (unless ``require_provenance=False``). Across rows: exact duplicates of
    (prompt, chosen, rejected) and, when records carry a ``split`` field, prompts that occur in
    more than one split (leakage). Returns the records unchanged when all is well.

    Lesson 02.
    """
    problems = find_problems(records, require_provenance=require_provenance, split_field=split_field)
    if problems:
        raise PairValidationError(problems)
    return records


def filter_valid(records: Sequence[Mapping], *, require_provenance: bool = True) -> tuple[list[Mapping], list[tuple[int, str]]]:
    """Drop the rows that fail a row-level check (the later copy of a duplicate is dropped).

    Returns ``(kept, problems)``; report ``problems`` rather than dropping rows silently.
    Cross-split leakage is not fixed here: re-split with :func:`split_by_prompt`.

    Lesson 02.
    """
    problems = [p for p in find_problems(records, require_provenance=require_provenance, split_field="\0")
                if p[0] is not None]
    bad = {i for i, _ in problems}
    return [r for i, r in enumerate(records) if i not in bad], problems


# ----------------------------------------------------------------------------- versions
def drop_empty(records: Sequence[Mapping]) -> list[Mapping]:
    """The records whose chosen and rejected responses both hold some text. The world's grammar
    can write an empty answer (a how-to with every step dropped); a loss on log-probs or a reward
    model needs at least one response token per side. Lesson 02."""
    return [r for r in records if str(r.get("chosen", "")).strip() and str(r.get("rejected", "")).strip()]


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def record_hash(record: Mapping) -> str:
    """A short sha256 of one record's full content (every field, key order ignored). Lesson 02."""
    return hashlib.sha256(_canonical(dict(record))).hexdigest()[:16]


def dataset_hash(records: Iterable[Mapping]) -> str:
    """The data version: a 16-hex sha256 of the multiset of records.

    Row order does not matter (shuffling is not a new data set); any changed field, added,
    removed or duplicated record gives a new version.

    Lesson 02.
    """
    hashes = sorted(record_hash(r) for r in records)
    return hashlib.sha256(("\n".join(hashes)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- splits
def _check_fractions(fractions) -> tuple[list[str] | None, np.ndarray]:
    names = None
    if isinstance(fractions, Mapping):
        names, fractions = list(fractions), list(fractions.values())
    try:
        f = np.asarray(fractions, dtype=float)
    except (TypeError, ValueError):
        f = np.zeros(0)
    if f.ndim != 1 or len(f) < 2 or np.any(f < 0) or not np.isclose(f.sum(), 1.0, atol=1e-6):
        raise ValueError(f"fractions must be two or more non-negative numbers summing to 1 "
                         f"(e.g. (0.8, 0.2) or {{'train': 0.8, 'test': 0.2}}), got {fractions}")
    return names, f


def _cut(n: int, f: np.ndarray) -> list[int]:
    bounds = np.round(np.cumsum(f) * n).astype(int)
    bounds[-1] = n
    return [0] + bounds.tolist()


def split_by_prompt(records: Sequence[Mapping], fractions=(0.8, 0.2), seed: int = 0):
    """Split records so that all pairs of one prompt go to the same split.

    The distinct prompts are shuffled with ``seed`` and cut by ``fractions`` (so fractions
    count prompts, not rows). Returns a tuple of lists, or a dict if ``fractions`` is a dict
    such as ``{"train": 0.8, "test": 0.2}``.

    Lesson 02.
    """
    names, f = _check_fractions(fractions)
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    order = np.random.default_rng(seed).permutation(len(prompts))
    bounds = _cut(len(prompts), f)
    where = {}
    for k in range(len(f)):
        for j in order[bounds[k]:bounds[k + 1]]:
            where[prompts[j]] = k
    out = [[] for _ in f]
    for r in records:
        out[where[r["prompt"]]].append(r)
    return dict(zip(names, out)) if names else tuple(out)


def split_by_row(records: Sequence[Mapping], fractions=(0.8, 0.2), seed: int = 0):
    """Split records row by row, ignoring prompts (the mistake :func:`check_leakage` measures). Lesson 02."""
    names, f = _check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(len(records))
    bounds = _cut(len(records), f)
    out = [[records[j] for j in order[bounds[k]:bounds[k + 1]]] for k in range(len(f))]
    return dict(zip(names, out)) if names else tuple(out)


def check_leakage(train: Sequence[Mapping], test: Sequence[Mapping]) -> dict:
    """How much of ``test`` shares a prompt with ``train``.

    Returns ``{"shared_prompts": sorted list, "prompt_rate": share of distinct test prompts seen
    in train, "row_rate": share of test rows whose prompt was seen in train,
    "duplicate_rows": test rows whose (prompt, chosen, rejected) also occurs in train}``.

    Lesson 02.
    """
    train_prompts = {r["prompt"] for r in train}
    train_keys = {tuple(r[f] for f in PAIR_FIELDS) for r in train}
    test_prompts = {r["prompt"] for r in test}
    shared = sorted(test_prompts & train_prompts)
    n = len(test)
    return {
        "shared_prompts": shared,
        "prompt_rate": len(shared) / len(test_prompts) if test_prompts else 0.0,
        "row_rate": sum(r["prompt"] in train_prompts for r in test) / n if n else 0.0,
        "duplicate_rows": sum(tuple(r[f] for f in PAIR_FIELDS) in train_keys for r in test),
    }


# ----------------------------------------------------------------------------- I/O and formats
def save_jsonl(records: Iterable[Mapping], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8). Returns the path. Lesson 02."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n")
    return path


def load_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file of records; a bad line raises ValueError naming its line number. Lesson 02."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}); fix or remove that line") from None
    return out


def to_trl(records: Sequence[Mapping], template: str | None = None, keep_provenance: bool = False) -> list[dict]:
    """Records as TRL's standard (non-conversational) preference rows {prompt, chosen, rejected}.

    With ``template`` (e.g. ``preflab.world.PROMPT_TEMPLATE``) the prompt is written the way the
    model sees it and each response gets the leading space that :func:`preflab.model.encode` uses,
    so TRL's concatenation prompt + chosen reproduces the course's tokens. ``keep_provenance``
    copies the provenance fields along (TRL ignores extra columns).

    Lesson 02.
    """
    rows = []
    for r in records:
        row = {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
        if template is not None:
            row = {"prompt": template.format(prompt=r["prompt"]),
                   "chosen": " " + r["chosen"].strip(), "rejected": " " + r["rejected"].strip()}
        if keep_provenance:
            row.update({f: r.get(f) for f in PROVENANCE_FIELDS})
        rows.append(row)
    return rows


def from_trl(rows: Iterable[Mapping], template: str | None = None, **provenance) -> list[dict]:
    """TRL rows back to records. ``template`` strips the prompt template that :func:`to_trl` added;
    ``provenance`` (labeler=..., policy_version=..., ...) fills fields the rows lack. Lesson 02."""
    prefix = suffix = ""
    if template is not None:
        prefix, _, suffix = template.partition("{prompt}")
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        for f in PAIR_FIELDS:
            if f not in row:
                raise ValueError(f"TRL row {i} has no {f!r} column; preference rows need prompt, chosen, rejected")
        if isinstance(row["chosen"], list) or isinstance(row["prompt"], list):
            raise ValueError(f"TRL row {i} is in the conversational format (lists of messages); "
                             f"apply the chat template first, or use the standard string format")
        p = row["prompt"]
        if template is not None and p.startswith(prefix) and p.endswith(suffix):
            p = p[len(prefix): len(p) - len(suffix) if suffix else None]
        rec = {**{f: row[f] for f in row if f not in PAIR_FIELDS}, "prompt": p,
               "chosen": row["chosen"].strip(), "rejected": row["rejected"].strip()}
        for k, v in provenance.items():
            if rec.get(k) is None:
                rec[k] = v
        out.append(rec)
    return out


def to_dataset(records: Sequence[Mapping]):
    """A ``datasets.Dataset`` from records (``Dataset.from_list``): what TRL trainers take. Lesson 02."""
    from datasets import Dataset

    if len(records) == 0:
        raise ValueError("to_dataset needs at least one record")
    return Dataset.from_list([dict(r) for r in records])


def load_pairs_dataset(path: str | Path, split: str = "train"):
    """Load a local JSONL preference file with ``datasets.load_dataset("json", data_files=...)``.

    The same call loads a real preference set you have downloaded (any file with prompt,
    chosen and rejected columns); nothing here contacts the network.

    Lesson 02.
    """
    from datasets import load_dataset

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no preference file at {path}; write one with save_jsonl(records, path)")
    ds = load_dataset("json", data_files=str(path), split=split)
    missing = [f for f in PAIR_FIELDS if f not in ds.column_names]
    if missing:
        raise ValueError(f"{path} has columns {ds.column_names}, missing {missing}: "
                         f"a preference file needs prompt, chosen and rejected")
    return ds


# ----------------------------------------------------------------------------- label noise
def relabel(world, records: Sequence[Mapping], labeler, rng) -> np.ndarray:
    """Have ``labeler`` judge again the comparisons in ``records``, each shown as (chosen, rejected).

    Returns a 0/1 array: 1 where the new labeler prefers the side shown first (the record's
    ``chosen``). Two labelers run on the same records give overlapping labels for
    :func:`agreement` and :func:`cohens_kappa`.

    Lesson 02 (and 10's unbiased control).
    """
    rng = as_rng(rng)
    return np.array([labeler.label(world, r["prompt"], r["chosen"], r["rejected"], rng) for r in records], dtype=int)


def _labels_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"overlapping labels must be two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no overlapping labels: give each labeler at least one shared item")
    return a, b


def agreement(labels_a, labels_b) -> float:
    """Observed agreement p_o: the share of shared items the two labelers labelled the same. Lesson 02."""
    a, b = _labels_pair(labels_a, labels_b)
    return float(np.mean(a == b))


def cohens_kappa(labels_a, labels_b) -> float:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e), p_e = sum over classes c of P_a(c) * P_b(c).

    1 is perfect agreement, 0 is chance level given each labeler's label rates, negative is
    worse than chance. If both labelers use a single class throughout (p_e = 1) kappa is
    undefined and a ValueError says so.

    Lesson 02.
    """
    a, b = _labels_pair(labels_a, labels_b)
    p_o = float(np.mean(a == b))
    ca, cb = Counter(a.tolist()), Counter(b.tolist())
    p_e = sum((ca[c] / len(a)) * (cb[c] / len(b)) for c in set(ca) | set(cb))
    if np.isclose(p_e, 1.0):
        raise ValueError("Cohen's kappa is undefined when both labelers always give the same single label")
    return float((p_o - p_e) / (1.0 - p_e))


def predicted_agreement(probs) -> float:
    """Expected agreement of two independent labelers who each prefer the first response with
    probability p (per item):  E[p^2 + (1 - p)^2]. Lesson 02."""
    p = np.asarray(list(probs) if not isinstance(probs, np.ndarray) else probs, dtype=float)
    if p.size == 0 or np.any((p < 0) | (p > 1)):
        raise ValueError("predicted_agreement needs probabilities in [0, 1], at least one")
    return float(np.mean(p ** 2 + (1 - p) ** 2))
