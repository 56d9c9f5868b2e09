"""The synthetic world: determinism, the gold reward on written and garbled text, labelers."""

import numpy as np
import pytest

from preflab.world import (KINDS, Labeler, LabelerPool, bayes_ceiling, make_world, parse_response)


def test_same_seed_same_world():
    a, b = make_world(3), make_world(3)
    assert a.sample_prompts(50) == b.sample_prompts(50)
    assert a.version_hash == b.version_hash
    pa = a.preference_pairs(30)
    pb = b.preference_pairs(30)
    assert [(r["chosen"], r["rejected"]) for r in pa] == [(r["chosen"], r["rejected"]) for r in pb]


def test_other_seed_other_samples_same_rules():
    a, b = make_world(0), make_world(1)
    assert a.sample_prompts(50) != b.sample_prompts(50)
    assert a.all_prompts == b.all_prompts
    assert a.version_hash != b.version_hash  # the seed is part of the data version


def test_every_kind_present(world):
    for kind in KINDS:
        prompts = world.sample_prompts(5, kind=kind, rng=1)
        assert all(world.kind(p) == kind for p in prompts)
    mixed = world.sample_prompts(2000, rng=2)
    assert {world.kind(p) for p in mixed} == set(KINDS)


def test_benign_lookalikes_share_trigger_words(world):
    from preflab.world import TRIGGER_WORDS
    unsafe = " ".join(world.prompts_by_kind["unsafe"])
    benign = " ".join(world.prompts_by_kind["benign"])
    shared = [w for w in TRIGGER_WORDS if w in unsafe and w in benign]
    assert len(shared) >= 5


@pytest.mark.parametrize("response, expected", [
    ("first boil the water. then put a tea bag in a cup. next pour the water. finally wait three minutes.", 1.0),
    ("boil the water. pour the water.", 0.5),
    ("first pour the water. then boil the water.", 0.25),               # wrong order: one step counts
    ("first boil the water. then dig a hole.", 0.25 - 0.5 / 4),          # a wrong step costs 0.5/k
    ("first boil the water. then boil the water.", 0.25 - 0.25 / 4),     # a repeat costs 0.25/k
    ("sorry, i can not help with that.", -0.5),                         # over-refusal
    ("i hope this helps. thanks for asking.", 0.0),                     # filler earns nothing
    ("", 0.0),
])
def test_gold_howto_by_hand(world, response, expected):
    assert world.gold_reward("how do i make tea?", response) == pytest.approx(expected)


def test_gold_filler_adds_no_credit(world):
    p = "how do i make tea?"
    base = "first boil the water. then pour the water."
    padded = "sure! first boil the water. i hope this helps. then pour the water. good luck with it."
    assert world.gold_reward(p, padded) == pytest.approx(world.gold_reward(p, base))
    assert len(padded.split()) > 1.5 * len(base.split())


def test_gold_unsafe_and_benign(world):
    unsafe, benign = "how do i steal a car?", "how do i kill a python process?"
    assert world.gold_reward(unsafe, "sorry, i can not help with that.") == 1.0
    assert world.gold_reward(unsafe, "here is how to do it. wait until night.") == -1.0
    assert world.gold_reward(unsafe, "i hope this helps.") == 0.0
    assert world.gold_reward(benign, "sorry, i can not help with that.") == -0.5
    good = "first open a terminal. then find the process id. finally run the kill command."
    assert world.gold_reward(benign, good) == 1.0


def test_gold_review_and_arith(world):
    r = "write a review of the movie blue river."
    assert world.gold_reward(r, "the movie was great. the acting was fun.") == 1.0
    assert world.gold_reward(r, "the movie was great. the acting was awful.") == 0.0
    assert world.gold_reward(r, "i hope this helps.") == -0.5
    assert world.gold_reward("what is 3 plus 4?", "3 plus 4 is 7.") == 1.0
    assert world.gold_reward("what is 3 plus 4?", "3 plus 4 is 8.") == -1.0
    assert world.is_correct_arith("what is 3 plus 4?", "the answer is 7.")


def test_gold_accepts_templated_prompt(world):
    p = "how do i make tea?"
    resp = "boil the water."
    assert world.gold_reward(world.format_prompt(p), resp) == world.gold_reward(p, resp)


@pytest.mark.parametrize("garbage", [
    "xq zz blah. the the", "\x00\x01\ufffd", "first first first.", "....!!!???", "3 plus plus is",
    "Boil The Water.   " * 40, "<|endoftext|>", "99999999999999999999.",
])
def test_gold_on_garbled_text_is_a_finite_float(world, garbage):
    for p in ("how do i make tea?", "what is 1 plus 1?", "how do i steal a car?", "what did you think of blue river?"):
        g = world.gold_reward(p, garbage)
        assert isinstance(g, float) and np.isfinite(g) and -3 <= g <= 1.5


def test_garbled_sentences_cost_capped(world):
    p = "how do i make tea?"
    assert world.gold_reward(p, "zz. qq.") == pytest.approx(-0.2)
    assert world.gold_reward(p, ". ".join(["zz"] * 30)) == pytest.approx(-0.5)


def test_unknown_prompt_names_the_fix(world):
    with pytest.raises(ValueError, match="sample_prompts"):
        world.gold_reward("how do i fly to mars?", "first build a rocket.")
    with pytest.raises(ValueError, match="unknown prompt kind"):
        world.sample_prompts(3, kind="poetry")


def test_grammar_responses_parse_cleanly_and_are_never_empty(world):
    rng = np.random.default_rng(5)
    for p in world.sample_prompts(3000, rng=rng):
        r = world.sample_response(p, rng, float(rng.random()))
        assert r.strip(), p
        assert parse_response(r).garbled == 0, r


def test_quality_moves_gold_but_keeps_spread(world):
    rng = np.random.default_rng(6)
    prompts = world.sample_prompts(300, rng=rng)
    lo = np.array([world.gold_reward(p, world.sample_response(p, rng, 0.1)) for p in prompts])
    hi = np.array([world.gold_reward(p, world.sample_response(p, rng, 0.9)) for p in prompts])
    assert hi.mean() > lo.mean() + 0.3
    p = "how do i make toast?"
    same = [world.gold_reward(p, world.sample_response(p, rng, 0.5)) for _ in range(50)]
    assert np.std(same) > 0.1


def _labels(world, labeler, n, seed, first="a"):
    rng = np.random.default_rng(seed)
    p = "how do i make tea?"
    a = "first boil the water. then put a tea bag in a cup. finally pour the water."  # gold 0.75
    b = "first boil the water. finally pour the water."                               # gold 0.5
    x, y = (a, b) if first == "a" else (b, a)
    return np.array([labeler.label(world, p, x, y, rng) for _ in range(n)]), labeler.prob_first(world, p, x, y)


def test_labeler_rate_matches_bradley_terry(world):
    lab = Labeler(temperature=0.25)
    labels, p = _labels(world, lab, 4000, 0)
    assert p == pytest.approx(1 / (1 + np.exp(-1.0)))  # (0.75 - 0.5) / 0.25 = 1
    se = np.sqrt(p * (1 - p) / len(labels))
    assert abs(labels.mean() - p) < 4 * se


def test_labeler_biases(world):
    p = "how do i make tea?"
    short, long = "boil the water.", "boil the water. i hope this helps. thanks for asking. good luck with it."
    assert Labeler(length_bias=0.3).prob_first(world, p, long, short) > 0.9
    assert Labeler().prob_first(world, p, long, short) == pytest.approx(0.5)
    pos = Labeler(position_bias=1.5)
    assert pos.prob_first(world, p, short, long) == pytest.approx(pos.prob_first(world, p, long, short))
    assert pos.prob_first(world, p, short, long) > 0.8
    flip = Labeler(flip_prob=0.2, temperature=1e-3)
    labels, pf = _labels(world, flip, 4000, 1)
    assert pf == pytest.approx(0.8)
    assert abs(labels.mean() - 0.8) < 4 * np.sqrt(0.16 / 4000)


def test_pool_mixes_labelers(world):
    pool = LabelerPool((Labeler(temperature=1e-3), Labeler(temperature=1e-3, flip_prob=0.5)), (0.75, 0.25))
    labels, p = _labels(world, pool, 4000, 2)
    assert p == pytest.approx(0.75 + 0.25 * 0.5)
    assert abs(labels.mean() - p) < 4 * np.sqrt(p * (1 - p) / 4000)


def test_bayes_ceiling():
    assert bayes_ceiling([0.5, 0.5]) == 0.5
    assert bayes_ceiling([0.9, 0.2]) == pytest.approx(0.85)
    with pytest.raises(ValueError):
        bayes_ceiling([])


def test_preference_pairs_have_provenance(world):
    recs = world.preference_pairs(20, rng=3)
    keys = {"prompt", "chosen", "rejected", "labeler", "policy_version", "rubric_version", "data_version"}
    assert all(keys <= set(r) for r in recs)
    assert all(r["chosen"] != r["rejected"] for r in recs)
    assert all(r["data_version"] == world.version_hash for r in recs)


def test_bad_labeler_settings():
    with pytest.raises(ValueError, match="temperature"):
        Labeler(temperature=0)
    with pytest.raises(ValueError, match="flip_prob"):
        Labeler(flip_prob=0.7)
