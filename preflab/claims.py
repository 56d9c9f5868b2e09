"""Check cells: every lesson ends by asserting, on this run, the claim it teaches.

    from preflab.claims import check
    check("RM accuracy within 3 points of the labelers' ceiling", acc >= ceiling - 0.03,
          f"accuracy {acc:.3f}, ceiling {ceiling:.3f}")

``check`` prints one line per claim (``CLAIM PASS | name | detail`` or ``CLAIM FAIL | ...``)
and raises ``AssertionError`` on failure, so a notebook run that contradicts its lesson
fails loudly. ``make course`` reads these lines to build the gallery.
"""

from __future__ import annotations

PREFIX = "CLAIM"


class ClaimFailed(AssertionError):
    """A lesson's claim did not hold on this run."""


def check(name: str, condition: bool, detail: str = "") -> bool:
    """Assert one claim and print it in the format the course runner collects. Every lesson's check cell (lesson 00 on)."""
    ok = bool(condition)
    print(f"{PREFIX} {'PASS' if ok else 'FAIL'} | {name} | {detail}", flush=True)
    if not ok:
        raise ClaimFailed(f"claim did not hold: {name} ({detail})")
    return ok


def parse_claims(text: str) -> list[dict]:
    """Read the claim lines back from a notebook's printed output. Every lesson's check cell (lesson 00 on)."""
    out = []
    for line in text.splitlines():
        if line.startswith(PREFIX + " "):
            parts = [p.strip() for p in line[len(PREFIX) + 1:].split("|", 2)]
            if len(parts) == 3 and parts[0] in ("PASS", "FAIL"):
                out.append({"status": parts[0], "name": parts[1], "detail": parts[2]})
    return out
