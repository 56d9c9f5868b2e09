"""Check: is a submitted file a gradable copy of its exercise? (before nbgrader sees it)

nbgrader accepts several broken submissions silently (stripped metadata, deleted test cells) or
crashes on them (duplicated cells, broken JSON): each becomes a clear ``invalid`` row here, and
what can be repaired (edited locked cells, altered nbgrader metadata) is restored from the
release and noted.
"""

from __future__ import annotations

import json
import re

WRITTEN_STUB = "YOUR ANSWER HERE"


def _cells_by_id(nb: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in nb.get("cells", []):
        meta = c.get("metadata", {}) if isinstance(c, dict) else {}
        g = meta.get("nbgrader") if isinstance(meta, dict) else None
        if isinstance(g, dict) and g.get("grade_id"):
            out.setdefault(str(g["grade_id"]), []).append(c)
    return out


def _src(c: dict) -> str:
    s = c.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def _exercise_of_cells(nb: dict) -> str | None:
    nums = [m.group(1) for gid in _cells_by_id(nb) for m in [re.match(r"ex(\d\d)_", gid)] if m]
    if not nums:
        return None
    best = max(set(nums), key=nums.count)
    return best


def check_submission(raw: bytes, aid: str, released: dict) -> dict:
    """Check a submission against its released notebook before nbgrader sees it.

    Returns dict(ok, reason, notes, notebook (repaired JSON dict), answered_written).
    nbgrader accepts several of these silently (stripped metadata, deleted test cells) or
    crashes on them (duplicated cells, broken JSON): each becomes a clear ``invalid``.
    """
    import nbformat

    bad = lambda reason: dict(ok=False, reason=reason, notes=[], notebook=None, answered_written=False)  # noqa: E731
    try:
        text = raw.decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError:
        return bad("not a notebook: the file is not UTF-8 text")
    except json.JSONDecodeError as e:
        return bad(f"not a notebook: broken JSON ({e.msg} at line {e.lineno})")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return bad("not a notebook: no list of cells")
    try:
        nb = nbformat.reads(text, as_version=4)
        for c in nb.cells:  # fill fields some editors drop
            c.setdefault("metadata", {})
            if c.cell_type == "code":
                c.setdefault("outputs", [])
                c.setdefault("execution_count", None)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001
        return bad(f"not a valid notebook ({type(e).__name__}: {str(e).splitlines()[0][:120]})")

    rel_cells = _cells_by_id(released)
    sub_cells = _cells_by_id(nb)
    notes = []
    if not sub_cells:
        return bad("nbgrader metadata missing: no graded cells found (was the notebook rebuilt, "
                   "or its metadata stripped?); download the released notebook and copy your answers into it")
    if not set(sub_cells) & set(rel_cells):
        other = _exercise_of_cells(nb)
        return bad(f"the file holds the cells of exercise ex{other}, not {aid}" if other else
                   f"none of {aid}'s graded cells are in the file")
    dups = sorted(g for g, cs in sub_cells.items() if len(cs) > 1)
    if dups:
        return bad(f"cell '{dups[0]}' appears {len(sub_cells[dups[0]])} times (a copied cell keeps its "
                   "nbgrader id); delete the extra copy and resubmit")
    foreign = sorted(set(sub_cells) - set(rel_cells))
    if foreign:
        return bad(f"cell '{foreign[0]}' does not belong to {aid}")
    for gid, (rc,) in rel_cells.items():
        rmeta = rc["metadata"]["nbgrader"]
        if gid not in sub_cells:
            if rmeta.get("grade") and not rmeta.get("solution"):
                return bad(f"test cell '{gid}' was deleted")
            if rmeta.get("grade"):
                return bad(f"written answer cell '{gid}' was deleted")
            if rmeta.get("locked"):
                return bad(f"locked cell '{gid}' was deleted")
            notes.append(f"answer cell '{gid}' missing")
            continue
        (sc,) = sub_cells[gid]
        if sc.get("cell_type") != rc.get("cell_type"):
            return bad(f"cell '{gid}' was changed from {rc.get('cell_type')} to {sc.get('cell_type')}")
        smeta = sc["metadata"]["nbgrader"]
        if rmeta.get("locked") and _src(sc) != _src(rc):
            notes.append(f"edited locked cell '{gid}' restored from the release")
            sc["source"] = _src(rc)
        keys = ("grade", "solution", "locked", "points", "grade_id", "task")
        if any(smeta.get(k) != rmeta.get(k) for k in keys if k in rmeta):
            notes.append(f"nbgrader metadata of '{gid}' restored")
        sc["metadata"]["nbgrader"] = dict(rmeta)
    answered = False
    for gid, (rc,) in rel_cells.items():
        rmeta = rc["metadata"]["nbgrader"]
        if rmeta.get("grade") and rmeta.get("solution") and gid in sub_cells:
            if _src(sub_cells[gid][0]).strip() not in ("", WRITTEN_STUB):
                answered = True
    return dict(ok=True, reason="", notes=notes, notebook=nbformat.from_dict(nb), answered_written=answered)
