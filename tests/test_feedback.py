"""preflab.feedback: rubric versions and silent edits, releases, reviewer weights and votes, feedback intake."""

import numpy as np
import pytest

import preflab.world as world_module
from preflab.feedback import (FeedbackEvent, Rubric, RubricLabeler, VersionError, VersionRegistry, content_hash,
                              estimate_accuracy, ingest_feedback, vote_weights, weighted_vote)
from preflab.pairs import dataset_hash, filter_valid
from preflab.world import FILLER


@pytest.fixture(scope="module")
def records(world):
    return filter_valid(world.preference_pairs(60, rng=3))[0]


def test_rubric_from_world_matches_gold(world):
    v1 = Rubric.from_world()
    for p in world.sample_prompts(40, rng=1):
        r = world.sample_response(p, 2)
        assert v1.score(world, p, r) == pytest.approx(world.gold_reward(p, r))


def test_revised_rubric_changes_scores_and_restores_world(world):
    v1 = Rubric.from_world()
    warm = v1.revised("2.0", filler=0.25, over_refusal=0.0)
    p = "how do i make tea?"
    assert warm.score(world, p, FILLER[0] + " " + FILLER[1]) == pytest.approx(0.5)
    assert warm.score(world, p, "sorry, i can not help with that.") == pytest.approx(0.0)
    assert world.gold_reward(p, "sorry, i can not help with that.") == pytest.approx(-0.5)  # restored
    assert world_module.RUBRIC["version"] == v1.version
    with pytest.raises(ValueError, match="unknown rubric weights"):
        v1.revised("3", no_such_weight=1.0)


def test_rubric_restores_on_error(world):
    before = dict(world_module.RUBRIC)
    with pytest.raises(RuntimeError):
        with Rubric.from_world().revised("x", filler=1.0).active():
            raise RuntimeError("boom")
    assert world_module.RUBRIC == before


def test_rubric_hash_covers_text_and_weights():
    v1 = Rubric.from_world("text")
    assert v1.revised(v1.version).hash == v1.hash
    assert v1.revised(v1.version, text="other").hash != v1.hash
    assert v1.revised(v1.version, filler=0.1).hash != v1.hash
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})


def test_registry_catches_silent_edit():
    reg = VersionRegistry()
    v1 = Rubric.from_world()
    h = reg.register("rubric", "1.0", v1)
    assert reg.register("rubric", "1.0", v1) == h  # same content again is fine
    with pytest.raises(VersionError, match="changed without a new version"):
        reg.register("rubric", "1.0", v1.revised("1.0", filler=0.2))
    reg.register("rubric", "2.0", v1.revised("2.0", filler=0.2))
    with pytest.raises(VersionError, match="non-empty version"):
        reg.register("model", "", "x")


def test_check_records_and_release(records):
    reg = VersionRegistry()
    v1 = Rubric.from_world()
    edited = v1.revised("1.0", filler=0.2)
    reg.check_records([{**r, "rubric_hash": v1.hash} for r in records], v1)
    with pytest.raises(VersionError, match="silent edit"):
        reg.check_records([{**records[0], "rubric_hash": edited.hash}], v1)
    with pytest.raises(VersionError, match="rubric_version '0.9'"):
        reg.check_records([{**records[0], "rubric_version": "0.9"}], v1)
    m = reg.release("r1", policy_text=("p1", "text"), rubric=v1, data=("d1", records), model=("m1", "abc"))
    assert m["data"]["hash"] == reg.entries[("data", "d1")] and m["data"]["rows"] == len(records)
    assert reg.is_registered("model", "m1") and reg.releases == [m]
    with pytest.raises(VersionError, match="rubric versions"):
        reg.release("r2", policy_text=("p1", "text"), rubric=v1.revised("2.0", filler=0.2),
                    data=("d1", records), model=("m1", "abc"))
    with pytest.raises(VersionError, match="changed without a new version"):
        reg.release("r3", policy_text=("p1", "new text"), rubric=v1, data=("d1", records), model=("m1", "abc"))


def test_rubric_labeler(world):
    lab = RubricLabeler(Rubric.from_world(), temperature=0.1)
    p = "how do i make tea?"
    good, bad = world.best_response(p), "sorry, i can not help with that."
    assert lab.prob_first(world, p, good, bad) > 0.99
    assert lab.label(world, p, good, bad, np.random.default_rng(0)) == 1
    with pytest.raises(ValueError):
        RubricLabeler(Rubric.from_world(), temperature=0)
    with pytest.raises(ValueError):
        RubricLabeler(Rubric.from_world(), flip_prob=0.7)


def test_estimate_accuracy_and_weights():
    assert estimate_accuracy([1, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx((3 + 1) / (4 + 2))
    with pytest.raises(ValueError, match="gold tasks"):
        estimate_accuracy([], [])
    w = vote_weights([0.9, 0.5, 0.4, 1.0], floor=0.5)
    assert w[0] == pytest.approx(np.log(9)) and w[1] == 0 and w[2] == 0 and np.isfinite(w[3])


def test_weighted_vote():
    L = np.array([[1, 1, 0], [0, 0, 1], [1, -1, 0], [-1, -1, -1]])
    d, s = weighted_vote(L, [1.0, 1.0, 1.0])
    assert d.tolist() == [1, 0, -1, -1] and s.tolist() == [1.0, -1.0, 0.0, 0.0]
    d, _ = weighted_vote(L, [3.0, 1.0, 1.0])  # one trusted reviewer outvotes two
    assert d.tolist() == [1, 0, 1, -1]
    with pytest.raises(ValueError, match="shape"):
        weighted_vote(L, [1.0])
    with pytest.raises(ValueError, match="0, 1, or -1"):
        weighted_vote(np.array([[2]]), [1.0])


def test_calibrated_vote_beats_single_labels(world):
    """The weighted vote with gold-task weights recovers the truth better than one random label."""
    from preflab.world import Labeler

    rng = np.random.default_rng(0)
    pool = [r for r in world.preference_pairs(300, rng=9) if abs(r["gold_chosen"] - r["gold_rejected"]) > 1e-9]
    truth = np.array([int(r["gold_chosen"] > r["gold_rejected"]) for r in pool])
    revs = [Labeler(0.1), Labeler(0.3), Labeler(0.3, flip_prob=0.45)]
    L = np.array([[rv.label(world, r["prompt"], r["chosen"], r["rejected"], rng) for rv in revs] for r in pool])
    acc = [estimate_accuracy(L[:50, k], truth[:50]) for k in range(3)]
    d, _ = weighted_vote(L[50:], vote_weights(acc, floor=0.65))
    single = L[50:][np.arange(len(L) - 50), rng.integers(3, size=len(L) - 50)]
    assert np.mean(d == truth[50:]) > np.mean(single == truth[50:]) + 0.05


def test_ingest_feedback(records):
    reg = VersionRegistry()
    v1 = Rubric.from_world()
    reg.register("model", "m1", "hash")
    ok = dict(consent=True, source="thumbs", labeler="user", policy_version="m1", rubric_version=v1.version)
    r0, r1 = records[0], records[1]
    events = [FeedbackEvent("good", r0["prompt"], r0["chosen"] + " thanks for asking.", r0["rejected"], **ok),
              FeedbackEvent("noconsent", r0["prompt"], "a b", "c d", **{**ok, "consent": None}),
              {"event_id": "dict-declined", "prompt": r1["prompt"], "chosen": "x.", "rejected": "y.", **{**ok, "consent": False}},
              FeedbackEvent("nosource", r1["prompt"], "x.", "y.", **{**ok, "source": ""}),
              FeedbackEvent("unknownpolicy", r1["prompt"], "x.", "y.", **{**ok, "policy_version": "m9"}),
              FeedbackEvent("oldrubric", r1["prompt"], "x.", "y.", **{**ok, "rubric_version": "0.1"}),
              FeedbackEvent("same", r1["prompt"], "x.", "x.", **ok),
              FeedbackEvent("dup", r1["prompt"], r1["chosen"], r1["rejected"], **ok)]
    res = ingest_feedback(events, records, reg, v1)
    assert [r["event_id"] for r in res.accepted] == ["good"]
    reasons = dict(res.rejected)
    assert reasons["noconsent"] == "no consent recorded"
    assert reasons["dict-declined"] == "user declined consent"
    assert "missing provenance: source" in reasons["nosource"]
    assert "not a registered model" in reasons["unknownpolicy"]
    assert "not the current rubric" in reasons["oldrubric"]
    assert "identical" in reasons["same"]
    assert "duplicate" in reasons["dup"]
    assert res.old_version == dataset_hash(records) and res.new_version != res.old_version
    assert res.accepted[0]["data_version"] == res.new_version and res.accepted[0]["source"] == "thumbs"
    assert len(res.records) == len(records) + 1 and "event_id" not in records[0]  # base untouched
