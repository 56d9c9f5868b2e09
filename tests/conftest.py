"""Fixtures shared by the test modules. Module-scoped: each test module gets its own world (whose
default random stream advances as tests draw from it) and its own tiny policy, as before."""

import pytest

from preflab.model import load_policy
from preflab.world import make_world


@pytest.fixture(scope="module")
def world():
    """The course's world, seed 0."""
    return make_world(0)


@pytest.fixture(scope="module")
def policy():
    """The tiny SFT policy and its tokenizer, on the CPU: (model, tokenizer). Read-only: copy it to train."""
    return load_policy("tiny", device="cpu")
