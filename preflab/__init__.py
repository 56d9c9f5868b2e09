"""preflab: the small library behind the preference-optimization course.

One module per concept; import what a lesson needs, e.g. ``from preflab.world import make_world``.
Nothing heavy is imported here, so ``import preflab`` is instant.
"""

import os
from importlib import resources
from pathlib import Path

__version__ = "0.1.0"

SCALES = ("tiny", "gpt2")


def current_scale(scale=None) -> str:
    """The scale in force: ``scale``, else $PREFLAB_SCALE, else "tiny". Lesson 00."""
    scale = scale or os.environ.get("PREFLAB_SCALE", "tiny")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: choose one of {SCALES} "
                         f"(set by the scale argument or the PREFLAB_SCALE environment variable)")
    return scale


def data_dir():
    """The folder that holds ``tiny/``: the package data ``preflab._data`` (site-packages/preflab/_data
    in a wheel; the repository's data/ folder in an editable install, mapped by pyproject.toml), else the
    data/ folder beside the package (a checkout on sys.path that was never installed, as in Colab's
    setup cell or ``PYTHONPATH=.``). Cheap: the grader asks it without loading torch. Lesson 00."""
    try:
        return Path(str(resources.files("preflab._data"))).resolve()
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "data"
