"""Check cells: every lesson ends by asserting, on this run, the claim it teaches.

    from preflab.claims import check
    check("RM accuracy within 3 points of the labelers' ceiling", acc >= ceiling - 0.03,
          f"accuracy {acc:.3f}, ceiling {ceiling:.3f}")

``check`` prints one line per claim (``CLAIM PASS | name | detail`` or ``CLAIM FAIL | ...``)
and raises ``AssertionError`` on failure, so a notebook run that contradicts its lesson
fails loudly. ``make course`` reads these lines to build the gallery.

Which scale a claim is asserted at: every threshold in the check cells was measured on the tiny
model (seeds 0-2, CPU), so a claim is asserted only at the scales in ``scales`` (default
:data:`ASSERTED_AT`, the tiny scale). At another scale (``PREFLAB_SCALE=gpt2`` on Colab) the same
line is printed with `` [reported at gpt2, not asserted: ...]`` and a failure does not stop the
notebook: a threshold tuned on a 1 M-parameter model says nothing yet about GPT-2 (124 M).
"""

from __future__ import annotations

from preflab import current_scale

PREFIX = "CLAIM"
#: The scales at which the lessons' claims have been measured, and so are asserted.
ASSERTED_AT = ("tiny",)


class ClaimFailed(AssertionError):
    """A lesson's claim did not hold on this run."""


def check(name: str, condition: bool, detail: str = "", scales: tuple[str, ...] = ASSERTED_AT) -> bool:
    """Assert one claim and print it in the format the course runner collects; at a scale not in
    ``scales`` (the scale in force: $PREFLAB_SCALE, else tiny) report it without asserting.
    Every lesson's check cell (lesson 00 on)."""
    ok = bool(condition)
    scale = current_scale()
    asserted = scale in scales
    if not asserted:
        detail = (f"{detail} [reported at {scale}, not asserted: its threshold was measured at "
                  f"{' and '.join(scales)} only]")
    print(f"{PREFIX} {'PASS' if ok else 'FAIL'} | {name} | {detail}", flush=True)
    if not ok and asserted:
        raise ClaimFailed(f"claim did not hold: {name} ({detail})")
    return ok


def parse_claims(text: str) -> list[dict]:
    """Read the claim lines back from a notebook's printed output. Every lesson's check cell (lesson 00 on)."""
    out = []
    for line in text.splitlines():
        if line.startswith(PREFIX + " "):
            parts = [p.strip() for p in line[len(PREFIX) + 1:].split("|", 2)]
            if len(parts) == 3 and parts[0] in ("PASS", "FAIL"):
                out.append({"status": parts[0], "name": parts[1], "detail": parts[2],
                            "asserted": "[reported at " not in parts[2]})
    return out
