"""preflab.pairs: validation lists every problem, splits by prompt, versions, I/O, TRL and datasets, agreement."""

import json

import numpy as np
import pytest

from preflab.pairs import (REQUIRED_FIELDS, PairValidationError, agreement, check_leakage, cohens_kappa, drop_empty,
                           dataset_hash, filter_valid, find_problems, from_trl, load_jsonl, load_pairs_dataset,
                           make_record, predicted_agreement, relabel, save_jsonl, split_by_prompt, split_by_row,
                           to_dataset, to_trl, validate_pairs)
from preflab.world import PROMPT_TEMPLATE, Labeler


@pytest.fixture(scope="module")
def records(world):
    kept, _ = filter_valid(world.preference_pairs(600, rng=5))
    return kept


def test_world_pairs_carry_provenance(records):
    assert all(set(REQUIRED_FIELDS) <= set(r) for r in records)
    assert validate_pairs(records) is records


def test_make_record_roundtrip():
    r = make_record("p", "a", "b", labeler="l", policy_version="v", rubric_version="1", data_version="d", note=1)
    assert validate_pairs([r]) == [r] and r["note"] == 1


def test_validation_lists_every_problem_with_rows(records):
    bad = [dict(r) for r in records[:7]]
    del bad[1]["labeler"]
    bad[2]["rejected"] = "  " + bad[2]["chosen"] + " "
    bad[3]["chosen"] = ""
    bad[4] = dict(bad[0])
    bad[5]["policy_version"] = None
    bad[6] = "not a dict"
    with pytest.raises(PairValidationError) as exc:
        validate_pairs(bad)
    rows = {i for i, _ in exc.value.problems}
    assert rows == {1, 2, 3, 4, 5, 6}
    msg = str(exc.value)
    for needle in ("row 1: missing field(s) ['labeler']", "row 2: chosen and rejected are identical",
                   "row 3: field 'chosen' is empty", "row 4: exact duplicate of row 0", "row 6: is a str"):
        assert needle in msg
    assert isinstance(exc.value, ValueError)


def test_validation_finds_split_leakage(records):
    a, b = dict(records[0]), dict(records[1])
    b["prompt"] = a["prompt"]
    a["split"], b["split"] = "train", "test"
    probs = find_problems([a, b])
    assert len(probs) == 1 and "leaks across splits" in probs[0][1]
    assert find_problems([a, b], require_provenance=False, split_field="none") == []


def test_validation_without_provenance():
    assert validate_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}], require_provenance=False)
    with pytest.raises(PairValidationError, match="missing field"):
        validate_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(TypeError):
        validate_pairs("prompt,chosen,rejected")


def test_filter_valid_keeps_first_copy(records):
    data = list(records[:5]) + [dict(records[2]), {**records[3], "rejected": ""}]
    kept, probs = filter_valid(data)
    assert kept == list(records[:5]) and [i for i, _ in probs] == [5, 6]


def test_drop_empty_keeps_pairs_with_text_on_both_sides():
    rows = [dict(prompt="p", chosen="a.", rejected="b."), dict(prompt="p", chosen="  ", rejected="b."),
            dict(prompt="p", chosen="a.", rejected=""), dict(prompt="p", chosen="c.", rejected="d.")]
    assert drop_empty(rows) == [rows[0], rows[3]]
    import preflab.dpo
    assert preflab.dpo.drop_empty is drop_empty


def test_split_by_prompt_never_leaks(records):
    for seed in range(3):
        train, test = split_by_prompt(records, (0.8, 0.2), seed=seed)
        assert len(train) + len(test) == len(records)
        leak = check_leakage(train, test)
        assert leak["prompt_rate"] == 0 and leak["row_rate"] == 0 and leak["shared_prompts"] == []
        n_prompts = len({r["prompt"] for r in records})
        assert abs(len({r["prompt"] for r in test}) - 0.2 * n_prompts) <= 1
    d = split_by_prompt(records, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1)
    assert set(d) == {"train", "val", "test"} and sum(map(len, d.values())) == len(records)


def test_row_split_leaks(records):
    train, test = split_by_row(records, (0.8, 0.2), seed=0)
    assert len(test) == round(0.2 * len(records))
    assert check_leakage(train, test)["prompt_rate"] > 0.5


@pytest.mark.parametrize("bad", [(0.5, 0.6), (1.0,), (-0.1, 1.1), "ab"])
def test_bad_fractions(records, bad):
    with pytest.raises(ValueError, match="fractions"):
        split_by_prompt(records, bad)


def test_dataset_hash_is_the_data_version(records):
    v = dataset_hash(records)
    assert dataset_hash(list(reversed(records))) == v
    edited = [dict(r) for r in records]
    edited[3]["labeler"] = "x"
    assert dataset_hash(edited) != v
    assert dataset_hash(records[1:]) != v
    assert dataset_hash(list(records) + [records[0]]) != v
    assert len(v) == 16


def test_jsonl_and_datasets_roundtrip(records, tmp_path):
    path = save_jsonl(records, tmp_path / "sub" / "pairs.jsonl")
    assert dataset_hash(load_jsonl(path)) == dataset_hash(records)
    ds = load_pairs_dataset(path)
    assert ds.num_rows == len(records) and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert dataset_hash(ds.to_list()) == dataset_hash(records)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2"):
        load_jsonl(bad)
    nocols = tmp_path / "nocols.jsonl"
    nocols.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match="missing"):
        load_pairs_dataset(nocols)
    with pytest.raises(FileNotFoundError):
        load_pairs_dataset(tmp_path / "absent.jsonl")


def test_trl_format_roundtrip(records):
    rows = to_trl(records, template=PROMPT_TEMPLATE)
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert rows[0]["prompt"] == PROMPT_TEMPLATE.format(prompt=records[0]["prompt"])
    assert rows[0]["chosen"].startswith(" ")
    back = from_trl(to_trl(records, template=PROMPT_TEMPLATE, keep_provenance=True), template=PROMPT_TEMPLATE)
    assert dataset_hash([{k: r[k] for k in REQUIRED_FIELDS} for r in back]) == \
        dataset_hash([{k: r[k] for k in REQUIRED_FIELDS} for r in records])
    plain = from_trl(to_trl(records[:3]), labeler="trl", policy_version="p", rubric_version="1", data_version="d")
    validate_pairs(plain)
    ds = to_dataset(rows)
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    with pytest.raises(ValueError, match="conversational"):
        from_trl([{"prompt": [{"role": "user", "content": "hi"}], "chosen": [], "rejected": []}])
    with pytest.raises(ValueError, match="no 'rejected'"):
        from_trl([{"prompt": "p", "chosen": "a"}])


def test_trl_tokens_match_encode(records):
    """TRL concatenates prompt + chosen; with the template that is exactly what encode() tokenizes."""
    row = to_trl(records[:1], template=PROMPT_TEMPLATE)[0]
    r = records[0]
    assert row["prompt"] + row["chosen"] == PROMPT_TEMPLATE.format(prompt=r["prompt"]) + " " + r["chosen"].strip()


def test_agreement_and_kappa_by_hand():
    a = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    b = np.array([1, 0, 0, 0, 1, 1, 1, 1])
    assert agreement(a, b) == 0.75
    # p_o = 0.75; P_a(1) = 5/8, P_b(1) = 5/8; p_e = (5/8)^2 + (3/8)^2 = 34/64
    assert cohens_kappa(a, b) == pytest.approx((0.75 - 34 / 64) / (1 - 34 / 64))
    assert cohens_kappa(a, a) == pytest.approx(1.0)
    assert cohens_kappa(a, 1 - a) < 0
    with pytest.raises(ValueError, match="undefined"):
        cohens_kappa([1, 1], [1, 1])
    with pytest.raises(ValueError, match="same length"):
        agreement([1, 0], [1])
    with pytest.raises(ValueError, match="no overlapping"):
        agreement([], [])


def test_predicted_agreement():
    assert predicted_agreement([0.5]) == 0.5
    assert predicted_agreement([1.0, 0.0]) == 1.0
    assert predicted_agreement(np.array([0.8])) == pytest.approx(0.68)
    with pytest.raises(ValueError):
        predicted_agreement([1.2])


def test_measured_agreement_matches_prediction(world, records):
    lab = Labeler(temperature=0.2)
    items = records[:500]
    a = relabel(world, items, lab, 1)
    b = relabel(world, items, lab, 2)
    p = [lab.prob_first(world, r["prompt"], r["chosen"], r["rejected"]) for r in items]
    assert abs(agreement(a, b) - predicted_agreement(p)) < 0.07  # 3.5 standard errors at n = 500
    assert np.array_equal(relabel(world, items, lab, 1), a)  # seeded
