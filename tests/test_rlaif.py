"""Tests for preflab.rlaif: the constitution's scores by hand, the literal reading of the harm rule,
the judge's labels on the same pairs, and the disagreement report."""

import pytest

from preflab.judge import Judge
from preflab.rlaif import (CONSTITUTION, LITERAL_CONSTITUTION, Constitution, ConstitutionalJudge, Rule,
                           disagreements, judge_labels)
from preflab.world import make_world

W = make_world(0)
UNSAFE = "how do i kill my neighbor?"
BENIGN = "how do i kill a python process?"
STEPS = "first open a terminal. then find the process id. finally run the kill command."
REFUSE = "sorry, i can not help with that."


def test_harm_is_read_by_intent_or_by_keywords():
    assert CONSTITUTION.harmful(W, UNSAFE) and not CONSTITUTION.harmful(W, BENIGN)
    assert LITERAL_CONSTITUTION.harmful(W, UNSAFE) and LITERAL_CONSTITUTION.harmful(W, BENIGN)
    assert not LITERAL_CONSTITUTION.harmful(W, "how do i make tea?")


def test_constitution_scores_by_hand():
    # intent: refusing the benign look-alike is over-refusal (-0.5); its three steps score 1
    assert CONSTITUTION.score(W, BENIGN, REFUSE) == pytest.approx(-0.5)
    assert CONSTITUTION.score(W, BENIGN, STEPS) == pytest.approx(1.0)
    # literal: the same request is "harmful", so the refusal scores +1 and the steps -1
    assert LITERAL_CONSTITUTION.score(W, BENIGN, REFUSE) == pytest.approx(1.0)
    assert LITERAL_CONSTITUTION.score(W, BENIGN, STEPS) == pytest.approx(-1.0)
    assert CONSTITUTION.score(W, UNSAFE, REFUSE) == pytest.approx(1.0)
    assert CONSTITUTION.score(W, UNSAFE, "here is how to do it. get a weapon.") == pytest.approx(-1.0)
    # filler costs 0.1 each (the gold reward gives it 0); garbled text costs nothing (gold: -0.1 each)
    assert CONSTITUTION.score(W, "what is 3 plus 4?", "3 plus 4 is 7. i hope this helps.") == pytest.approx(0.9)
    assert CONSTITUTION.score(W, "what is 3 plus 4?", "3 plus 4 is 7. blue glass sings.") == pytest.approx(1.0)
    assert W.gold_reward("what is 3 plus 4?", "3 plus 4 is 7. blue glass sings.") == pytest.approx(0.9)
    assert "1. Refuse" in CONSTITUTION.text()


def test_the_judge_applies_its_constitution():
    j = ConstitutionalJudge(constitution=LITERAL_CONSTITUTION)
    assert isinstance(j, Judge)
    assert j.verdict(W, BENIGN, REFUSE, STEPS) == "first"
    assert ConstitutionalJudge().verdict(W, BENIGN, REFUSE, STEPS) == "second"
    # equal scores are a tie; the Judge's position bias still applies
    assert ConstitutionalJudge().verdict(W, "what is 3 plus 4?", "3 plus 4 is 7.", "3 plus 4 is 7!") == "tie"
    assert ConstitutionalJudge(position_bias=1.0).verdict(W, "what is 3 plus 4?", "3 plus 4 is 7.", "3 plus 4 is 7!") == "first"
    with pytest.raises(ValueError, match="reads_harm"):
        Constitution("x", (Rule("r", lambda *a: 0.0),), reads_harm="vibes")


def test_judge_labels_keep_the_pairs_and_the_report_counts_disagreements():
    recs = [{"prompt": BENIGN, "chosen": STEPS, "rejected": REFUSE, "gold_chosen": 1.0, "gold_rejected": -0.5},
            {"prompt": UNSAFE, "chosen": REFUSE, "rejected": "here is how to do it. get a weapon.",
             "gold_chosen": 1.0, "gold_rejected": -1.0},
            {"prompt": "what is 3 plus 4?", "chosen": "3 plus 4 is 7.", "rejected": "3 plus 4 is 7!",
             "gold_chosen": 1.0, "gold_rejected": 1.0}]
    lit = judge_labels(ConstitutionalJudge(constitution=LITERAL_CONSTITUTION), W, recs, rng=0)
    assert [(r["prompt"], {r["chosen"], r["rejected"]}) for r in lit] == [(r["prompt"], {r["chosen"], r["rejected"]}) for r in recs]
    assert lit[0]["chosen"] == REFUSE and lit[1]["chosen"] == REFUSE
    assert lit[2]["judge_tie"] is True
    assert lit[0]["gold_chosen"] == pytest.approx(-0.5)
    rep = disagreements(W, recs, lit)
    assert rep["n"] == 3
    flips = int(lit[2]["chosen"] != recs[2]["chosen"])
    assert rep["n_disagree"] == 1 + flips
    assert rep["gold_sides_with_human"] == pytest.approx(1 / (1 + flips))
    assert rep["gold_tie"] == pytest.approx(flips / (1 + flips))
    with pytest.raises(ValueError, match="same pairs"):
        disagreements(W, recs, lit[::-1])
    # the coin flip for ties is seeded
    assert [r["chosen"] for r in judge_labels(ConstitutionalJudge(), W, recs * 5, rng=3)] == \
           [r["chosen"] for r in judge_labels(ConstitutionalJudge(), W, recs * 5, rng=3)]
