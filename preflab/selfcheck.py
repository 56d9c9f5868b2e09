"""In-kernel checks for the exercises: they work on Colab too, where nbgrader is absent.

Every exercise imports this module in a locked cell that runs before any student code. At
import time it keeps private references to what it needs (``math``, ``random``, numpy's
``ndarray.tolist``), so a later ``np.isclose = lambda *a, **k: True`` or
``torch.allclose = ...`` in a student cell changes nothing here: every comparison is done
in plain Python on plain floats, against expected values computed with ``math`` from
constants stored in the test cell.

Threat model, stated plainly: this stops the easy ways of fooling a check (patching
numpy's or torch's comparison helpers, or the library function an exercise is compared
with). Code running in the same interpreter can always do worse; that is why the graded
run happens in a sandbox and the hidden tests live only in the instructor's copy.

Use::

    from preflab import selfcheck as sc
    sc.close(my_fn(1.0), 0.3133, name="loss at margin 1")
    sc.raises(ValueError, my_fn, [], name="empty input")
    sc.summary()      # the last cell of every exercise
"""

from __future__ import annotations

import math as _math
import random as _random
import sys as _sys

# Private references captured at import time (before any student cell runs).
_isfinite = _math.isfinite
_isnan = _math.isnan
_fsum = _math.fsum
_Random = _random.Random
_float = float
_len = len
_isinstance = isinstance
_print = print

exp = _math.exp
log = _math.log
log1p = _math.log1p
sqrt = _math.sqrt
inf = _math.inf


def _capture_tolist():
    np = _sys.modules.get("numpy")
    if np is None:
        try:
            import numpy as np  # noqa: F811
        except Exception:  # pragma: no cover - numpy is a course dependency
            return None, None
    return np.ndarray, np.ndarray.tolist  # ndarray is immutable: tolist cannot be patched


_ndarray, _ndarray_tolist = _capture_tolist()

_results: list[tuple[str, bool, str]] = []


class CheckFailed(AssertionError):
    """A self-check that did not pass (an AssertionError, so nbgrader counts it as a failed test)."""


def _tensor_tolist(x):
    torch = _sys.modules.get("torch")
    if torch is None:
        return None
    base = getattr(getattr(torch, "_C", None), "TensorBase", None)
    if base is not None and _isinstance(x, base):
        # The C-level method, not the (patchable) Python attribute torch.Tensor.tolist.
        return base.tolist(x.detach().cpu())
    return None


def to_floats(x) -> list:
    """Plain nested Python floats (or bools/ints) from a number, list, numpy array or tensor."""
    if _ndarray is not None and _isinstance(x, _ndarray):
        return _ndarray_tolist(x)
    t = _tensor_tolist(x)
    if t is not None:
        return t
    if _isinstance(x, (list, tuple)):
        return [to_floats(v) for v in x]
    if _isinstance(x, dict):
        return {k: to_floats(v) for k, v in x.items()}
    if x is None or _isinstance(x, (bool, int, _float, str)):
        return x
    # numpy scalars and 0-d objects
    if _ndarray is not None and hasattr(x, "dtype") and hasattr(x, "shape") and x.shape == ():
        return _float(x)
    return _float(x)


def _flatten(v, out):
    if _isinstance(v, list):
        for item in v:
            _flatten(item, out)
    else:
        out.append(v)
    return out


def _shape(v):
    if _isinstance(v, list):
        return (_len(v),) + (_shape(v[0]) if v else ())
    return ()


def _is_close(a, b, rtol, atol) -> bool:
    a = _float(a)
    b = _float(b)
    if _isnan(a) or _isnan(b):
        return False
    if a == b:  # covers equal infinities
        return True
    if not (_isfinite(a) and _isfinite(b)):
        return False
    d = a - b
    if d < 0:
        d = -d
    mb = b if b >= 0 else -b
    return d <= atol + rtol * mb


def _record(name: str, ok: bool, msg: str) -> None:
    _results.append((name, ok, msg))
    mark = "PASS" if ok else "FAIL"
    _print(f"[{mark}] {name}" + ("" if ok else f": {msg}"))
    if not ok:
        raise CheckFailed(f"{name}: {msg}")


def close(actual, expected, *, rtol: float = 1e-6, atol: float = 1e-8, name: str = "value") -> None:
    """Pass when ``actual`` matches ``expected`` elementwise (same shape, no NaN)."""
    try:
        a = to_floats(actual)
    except Exception as e:  # noqa: BLE001
        _record(name, False, f"could not read the result as numbers ({type(e).__name__})")
        return
    b = to_floats(expected)
    if _shape(a) != _shape(b):
        _record(name, False, f"expected shape {_shape(b)}, got {_shape(a)}")
        return
    fa, fb = _flatten(a, []), _flatten(b, [])
    for i, (x, y) in enumerate(zip(fa, fb)):
        try:
            ok = _is_close(x, y, rtol, atol)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            where = f" at position {i}" if _len(fa) > 1 else ""
            _record(name, False, f"expected {y!r}, got {x!r}{where}")
            return
    _record(name, True, "")


def equal(actual, expected, *, name: str = "value") -> None:
    """Pass when ``actual`` equals ``expected`` exactly (after conversion to Python values)."""
    try:
        a = to_floats(actual)
    except Exception as e:  # noqa: BLE001
        _record(name, False, f"could not read the result ({type(e).__name__})")
        return
    b = to_floats(expected)
    _record(name, a == b, "" if a == b else f"expected {b!r}, got {a!r}")


def true(condition, *, name: str, msg: str = "condition is false") -> None:
    """Pass when ``condition`` is the Python value True (a one-element array counts too)."""
    try:
        v = to_floats(condition)
        v = _flatten(v, []) if _isinstance(v, list) else [v]
        ok = _len(v) == 1 and v[0] is not None and bool(v[0]) and v[0] == v[0]
    except Exception:  # noqa: BLE001
        ok = False
    _record(name, ok, "" if ok else msg)


def finite(actual, *, name: str = "finite values") -> None:
    """Pass when every element is a finite number (no NaN, no infinity)."""
    try:
        vals = _flatten(to_floats(actual), []) if not _isinstance(actual, (int, _float)) else [actual]
        bad = [v for v in vals if not _isfinite(_float(v))]
    except Exception as e:  # noqa: BLE001
        _record(name, False, f"could not read the result ({type(e).__name__})")
        return
    _record(name, not bad, "" if not bad else f"found non-finite values {bad[:3]!r}")


def raises(exc_type, fn, *args, name: str = "raises", **kwargs) -> None:
    """Pass when ``fn(*args, **kwargs)`` raises ``exc_type`` (a clear error, not a NaN)."""
    try:
        fn(*args, **kwargs)
    except exc_type:
        _record(name, True, "")
        return
    except NotImplementedError:
        _record(name, False, "not implemented yet")
        return
    except Exception as e:  # noqa: BLE001
        _record(name, False, f"expected {exc_type.__name__}, got {type(e).__name__}: {e}")
        return
    _record(name, False, f"expected {exc_type.__name__}, nothing was raised")


def rng(seed: int):
    """A private ``random.Random`` (captured at import) for reproducible fresh inputs."""
    return _Random(seed)


def sigmoid(x: float) -> float:
    """The logistic function in plain Python, stable at both ends."""
    if x >= 0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


def softplus(x: float) -> float:
    """log(1 + e^x) in plain Python, stable at both ends (−log σ(−x))."""
    return x + log1p(exp(-x)) if x > 0 else log1p(exp(x))


def mean(values) -> float:
    values = list(values)
    return _fsum(values) / _len(values)


def in_colab() -> bool:
    return "google.colab" in _sys.modules


def summary() -> bool:
    """Print how many checks ran in this kernel and what to do next; True when all passed."""
    passed = sum(1 for _, ok, _ in _results if ok)
    failed = [n for n, ok, _ in _results if not ok]
    _print(f"Self-check: {passed} passed, {_len(failed)} failed.")
    for n in failed:
        _print(f"  still failing: {n}")
    if not _results:
        _print("No checks ran yet: run the notebook from the top (Run → Run All Cells).")
    elif not failed:
        _print("Every visible check passes. Hidden tests with other inputs and edge cases run at grading.")
    if in_colab():
        _print("On Colab, submit the notebook file: File → Download → Download .ipynb, "
               "then upload that file to your course page. Keep the file name.")
    else:
        _print("Save the notebook (Ctrl+S) and submit the .ipynb file; keep its name.")
    return not failed and bool(_results)


def reset() -> None:
    """Forget earlier results (used by tests)."""
    _results.clear()
