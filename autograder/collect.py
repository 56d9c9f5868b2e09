"""Collect: find the submitted files and whose they are, without trusting anything a student chose.

Accepted forms inside SUBMISSIONS (they can be mixed):

* ``<student_id>/…/<notebook>.ipynb``: one folder per student, as nbgrader's ``submitted/`` or an
  LMS "download all, one folder per student" gives it. The student is the top-level folder.
* ``<student_id>_<anything>.ipynb`` at the top level: the flat files Canvas and Moodle produce.
  The student is everything before the first underscore (with ``--roster``, the longest roster
  id the name starts with, so ids may contain underscores).
* ``*.zip`` at the top level: the instructor's LMS export, holding either form (a single
  wrapping folder is looked through).

Identity comes only from that structure (or a roster file), never from inside a student's own
files: archives inside a student's folder are not opened, symbolic links are never followed (a
link is reported, not read), only regular files are read, and a file's size is checked before
it is read. Ids are kept as written, in Unicode NFC form ("Jane Doe" and "Jane_Doe" are two
students); ids that cannot name a folder are reported, and ids that differ only in case are
flagged.
"""

from __future__ import annotations

import csv
import os
import re
import stat
import time
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024
MAX_ID_LENGTH = 128
EXNUM_RE = re.compile(r"ex(\d\d)(?!\d)", re.IGNORECASE)


@dataclass
class Found:
    """One submitted file (or a problem with one)."""

    student: str
    name: str
    """The file name with the student's prefix removed (flat form) or as submitted."""
    origin: str
    """Where it was found, for the instructor: path inside SUBMISSIONS (and the archive)."""
    path: Path | None = None
    mtime: float = 0.0
    size: int = 0
    problem: str = ""
    """Why this file cannot be graded (a link, too large, unreadable, an inner archive); empty if fine."""


@dataclass
class Collected:
    files: list[Found] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unknown: list[Found] = field(default_factory=list)
    """Top-level files that name no student."""
    oversized: dict[str, int] = field(default_factory=dict)
    """Archive members left unpacked for their size (path of the empty placeholder -> size)."""


def normalize_id(raw: str) -> tuple[str, str]:
    """(id, problem): the id in NFC form, or why it cannot be one."""
    sid = unicodedata.normalize("NFC", raw).strip()
    if not sid:
        return sid, "an empty student id"
    if len(sid) > MAX_ID_LENGTH:
        return sid[:MAX_ID_LENGTH], f"a student id longer than {MAX_ID_LENGTH} characters"
    if sid in (".", "..") or sid.startswith(".") or any(c in sid for c in "/\\\0") or \
            any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in sid):
        return sid, "a student id that cannot name a folder (slashes, control characters, a leading dot)"
    return sid, ""


def read_roster(path: Path) -> dict[str, str]:
    """A roster CSV: a ``student_id`` column, and optionally ``aliases`` (names the LMS uses for the
    folder, separated by ``;``). Returns alias-or-id → id, all in NFC."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "student_id" not in rows[0]:
        raise ValueError(f"{path}: a roster needs a 'student_id' column")
    for r in rows:
        sid, problem = normalize_id(r["student_id"] or "")
        if problem:
            raise ValueError(f"{path}: {problem}: {r['student_id']!r}")
        out[sid] = sid
        for alias in (r.get("aliases") or "").split(";"):
            if alias.strip():
                out[normalize_id(alias)[0]] = sid
    return out


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX" or name == ".ipynb_checkpoints"


def _regular(p: Path) -> tuple[os.stat_result | None, str]:
    """(lstat, problem) of a path that must be a plain file."""
    try:
        st = os.lstat(p)
    except OSError as e:
        return None, f"could not be read ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return st, "is a symbolic link (links are not followed: submit the file itself)"
    if not stat.S_ISREG(st.st_mode):
        return st, "is not a regular file"
    if st.st_size > MAX_NOTEBOOK_BYTES:
        return st, (f"is {st.st_size >> 20} MiB; the limit is {MAX_NOTEBOOK_BYTES >> 20} MiB "
                    "(clear the outputs and resubmit)")
    return st, ""


def read_bounded(path: Path, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """A regular file's bytes, read without following a link and never more than ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(f"larger than {limit >> 20} MiB")
    return data


def _entries(base: Path, warnings: list[str], origin: str) -> list[Path]:
    try:
        return sorted(p for p in base.iterdir() if not _hidden(p.name))
    except OSError as e:
        warnings.append(f"{origin or base.name}: could not list the folder ({e.strerror})")
        return []


def _is_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def _flat_student(name: str, roster: dict[str, str] | None) -> tuple[str, str] | None:
    """(raw student, rest) of a flat LMS file name, or None."""
    if roster:
        best = max((k for k in roster if name.startswith(k + "_")), key=len, default=None)
        if best:
            return best, name[len(best) + 1:]
    if "_" not in name:
        return None
    raw, rest = name.split("_", 1)
    if EXNUM_RE.fullmatch(raw) or raw.lower() == "extra" or not rest.lower().endswith((".ipynb", ".zip", ".json")):
        return None  # "ex01_preferences….ipynb" is an exercise's own name, not "<student>_<file>"
    return raw, rest


def _add(out: Collected, raw: str, name: str, origin: str, path: Path | None, st, problem: str) -> None:
    out.files.append(Found(student=raw, name=name, origin=origin, path=path,
                           mtime=st.st_mtime if st else 0.0, size=st.st_size if st else 0, problem=problem))


def _problem(out: Collected, p: Path) -> tuple[os.stat_result | None, str]:
    if str(p) in out.oversized:
        return None, (f"is {out.oversized[str(p)] >> 20} MiB; the limit is {MAX_NOTEBOOK_BYTES >> 20} MiB "
                      "(clear the outputs and resubmit)")
    return _regular(p)


def _student_folder(out: Collected, raw: str, folder: Path, origin: str) -> None:
    """Every file below a student's folder is that student's; nothing is unpacked, no link followed."""
    stack = [folder]
    while stack:
        d = stack.pop()
        for p in _entries(d, out.warnings, origin):
            rel = f"{origin}{raw}/{p.relative_to(folder)}"
            try:
                mode = os.lstat(p).st_mode
            except OSError as e:
                _add(out, raw, p.name, rel, p, None, f"could not be read ({e.strerror})")
                continue
            if stat.S_ISDIR(mode):
                stack.append(p)
                continue
            st, problem = _problem(out, p)
            if not problem and p.suffix.lower() == ".zip":
                problem = "is an archive inside a student's folder (not opened: submit the .ipynb itself)"
            if p.suffix.lower() not in (".ipynb", ".zip", ".json") and not problem:
                continue  # other files a student uploads (a PDF, a data file) are not graded
            _add(out, raw, p.name, rel, p, st, problem)


def _extract(zpath: Path, dest: Path, warnings: list[str], oversized: dict[str, int]) -> None:
    """Unpack the notebooks of an instructor's archive: no absolute paths, no '..', no links,
    sizes checked before and while writing."""
    total = 0
    with zipfile.ZipFile(zpath) as z:
        for info in z.infolist():
            name = info.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                warnings.append(f"{zpath.name}: skipped unsafe member {name!r}")
                continue
            if info.is_dir() or any(_hidden(x) for x in parts):
                continue
            if not name.lower().endswith((".ipynb", ".zip", ".json")):
                continue
            if info.file_size > MAX_NOTEBOOK_BYTES:
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")  # an empty placeholder, so the row can say why
                oversized[str(target)] = info.file_size
                continue
            total += info.file_size
            if total > MAX_ARCHIVE_BYTES:
                warnings.append(f"{zpath.name}: stopped at {MAX_ARCHIVE_BYTES >> 20} MiB unpacked")
                break
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            written, cap = 0, min(info.file_size, MAX_NOTEBOOK_BYTES)
            with z.open(info) as src, open(target, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > cap:  # the header lied about the size
                        warnings.append(f"{zpath.name}: {name!r} is larger than it claims; cut")
                        break
                    dst.write(chunk)
            mtime = time.mktime(info.date_time + (0, 0, -1))
            os.utime(target, (mtime, mtime))


def _walk(out: Collected, base: Path, origin: str, roster, tmp: Path, depth: int, archives: bool) -> None:
    entries = _entries(base, out.warnings, origin)
    dirs = [p for p in entries if _is_dir(p)]
    files = [p for p in entries if not _is_dir(p)]
    if depth < 2 and len(dirs) == 1 and not files:
        inner = _entries(dirs[0], out.warnings, origin)
        # a lone folder wraps an export when it holds student folders or flat LMS files (a lone
        # student's folder holds notebooks, or folders named after exercises)
        if any(_is_dir(p) and not EXNUM_RE.match(p.name) for p in inner) or \
                any(_flat_student(p.name, roster) for p in inner if not _is_dir(p)):
            _walk(out, dirs[0], origin, roster, tmp, depth + 1, archives)
            return
    for d in dirs:
        _student_folder(out, d.name, d, origin)
    for f in files:
        st, problem = _problem(out, f)
        if f.suffix.lower() == ".zip" and archives:
            try:
                lst = os.lstat(f)
                if not stat.S_ISREG(lst.st_mode):
                    out.warnings.append(f"{origin}{f.name}: not a regular file; skipped")
                    continue
                dest = tmp / f"zip{len(list(tmp.iterdir()))}"
                dest.mkdir()
                _extract(f, dest, out.warnings, out.oversized)
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                out.warnings.append(f"{origin}{f.name}: not a readable zip ({e})")
                continue
            _walk(out, dest, f"{origin}{f.name}:", roster, tmp, depth + 1, archives=False)
            continue
        flat = _flat_student(f.name, roster)
        if flat is None:
            out.unknown.append(Found(student="", name=f.name, origin=f"{origin}{f.name}", path=f, problem=problem))
            continue
        raw, rest = flat
        if f.suffix.lower() == ".zip" and not problem:
            problem = "is an archive a student submitted (not opened: submit the .ipynb itself)"
        _add(out, raw, rest, f"{origin}{f.name}", f, st, problem)


def collect(root: Path, tmp: Path, roster: dict[str, str] | None = None) -> Collected:
    """Every submitted file under ``root``, with its (raw) student; archives unpacked into ``tmp``."""
    out = Collected()
    _walk(out, root, "", roster, tmp, 0, archives=True)
    return out


def exercise_from_name(name: str, ids: list[str]) -> str | None:
    """The exercise a file name names, after Colab's "Copy of " and " (1)" are removed."""
    base = name[:-6] if name.lower().endswith(".ipynb") else name
    base = re.sub(r"^(copy of\s+)+", "", base.strip(), flags=re.IGNORECASE)
    base = re.sub(r"\s*[\(\[]\d+[\)\]]$", "", base).strip()
    if base in ids:
        return base
    nums = {m.group(1) for m in EXNUM_RE.finditer(base)}
    cands = [i for i in ids if i[2:4] in nums]
    return cands[0] if len(cands) == 1 else None
