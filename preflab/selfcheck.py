"""The checks in the exercises' test cells: one set of functions for two places.

In a student's kernel (JupyterLab, Colab, nbgrader's Validate button) every check prints
``[PASS]``/``[FAIL]`` and a failed check raises :class:`CheckFailed`, so the cell stops there.
When the notebook is graded, the test cells do not run in the student's kernel at all: the
grader runs them in its own process (``autograder.checker``) with this same module in grader
mode, where a check records its result and the cell goes on, and every name the student
defined is a proxy that calls the student's function in the sandboxed kernel with plain data
(:mod:`preflab.wire`). Expected values, hidden tests and this module's grader-side state never
enter the student's interpreter.

Each check carries ``points``: the share of its test cell's points it is worth (the test cell's
visible checks show theirs; a comment in the cell says what its hidden checks are worth).
A cell's score is the sum of the points of the checks that passed.

In the kernel, the module keeps private references to what it compares with (``math``, numpy's
``ndarray.tolist``, torch's C-level ``tolist``), taken at import time, before student code runs,
so patching numpy or torch helpers does not fool a self-check. That protects the student's own
feedback only; grades come from the grader's side.

Use::

    from preflab import selfcheck as sc
    sc.close(my_fn(1.0), 0.3133, name="loss at margin 1", points=1)
    sc.raises(ValueError, my_fn, [], name="empty input", points=0.5)
    value, grads = sc.grad(my_loss, pc, pr, wrt=(0, 1))     # autograd, here or across the boundary
    before = sc.fingerprint(reference)
    trained, after = sc.call(my_train, model, reference)     # the result, and the arguments after the call
    sc.equal(sc.fingerprint(after[1]), before, name="reference untouched", points=0.5)
    sc.unchanged(my_fn, arr, name="does not modify its input", points=0.5)
    sc.summary()      # the last cell of every exercise
"""

from __future__ import annotations

import copy as _copy
import math as _math
import random as _random
import sys as _sys

from preflab import wire as _wire

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
    """A self-check that did not pass (an AssertionError, so nbgrader counts it as a failed test). The exercises' checks (course infrastructure, not taught in a lesson)."""


def _tensor_tolist(x):
    torch = _sys.modules.get("torch")
    if torch is None:
        return None
    base = getattr(getattr(torch, "_C", None), "TensorBase", None)
    if base is not None and _isinstance(x, base):
        # The C-level method, not the (patchable) Python attribute torch.Tensor.tolist.
        return base.tolist(x.detach().cpu())
    return None


def _module_digest(m) -> str | None:
    """A digest of a torch module's parameters and buffers (names, dtypes, shapes and bytes), or
    None for anything that is not a module: two models compare equal exactly when their weights do."""
    torch = _sys.modules.get("torch")
    if torch is None or not _isinstance(m, torch.nn.Module):
        return None
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(m.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return type(m).__name__ + ":" + h.hexdigest()[:32]


def to_floats(x) -> list:
    """Plain nested Python floats (or bools/ints) from a number, list, numpy array or tensor; a
    model (a torch module) becomes ``{"model": digest of its weights}``. The exercises' checks
    (course infrastructure, not taught in a lesson)."""
    x = _value(x)
    if _ndarray is not None and _isinstance(x, _ndarray):
        return _ndarray_tolist(x)
    t = _tensor_tolist(x)
    if t is not None:
        return t
    d = _module_digest(x)
    if d is not None:
        return {"model": d}
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


class _Grader:
    """Where checks go in grader mode (set by ``autograder.checker``): a list of results."""

    def __init__(self):
        self.results: list[dict] = []
        self.hidden = False

    def add(self, name: str, ok: bool, msg: str, points, expected: str | None = None) -> None:
        self.results.append(dict(name=str(name), ok=bool(ok), message=str(msg)[:500],
                                 expected=None if expected is None else str(expected)[:300],
                                 points=_float(points) if points is not None else None, hidden=self.hidden))


#: None in a student's kernel; a :class:`_Grader` in the grader's process.
GRADER: _Grader | None = None


def grader_mode() -> _Grader:
    """Switch this process to grader mode (checks record and never raise); returns the recorder. The exercises' checks (course infrastructure, not taught in a lesson)."""
    global GRADER
    GRADER = _Grader()
    return GRADER


def _pts(points) -> str:
    if points is None:
        return ""
    p = _float(points)
    return f" ({p:g} point{'' if p == 1 else 's'})"


def _record(name: str, ok: bool, msg: str, points=None, expected: str | None = None) -> bool:
    if GRADER is not None:
        GRADER.add(name, ok, msg, points, expected)
        return ok
    if expected is not None and not ok:
        msg = f"expected {expected}, {msg}"
    _results.append((name, ok, msg))
    mark = "PASS" if ok else "FAIL"
    _print(f"[{mark}] {name}{_pts(points)}" + ("" if ok else f": {msg}"))
    if not ok:
        raise CheckFailed(f"{name}: {msg}")
    return ok


def _value(x):
    """A proxy for a student's variable (grader mode) is fetched; anything else is itself."""
    get = getattr(type(x), "__preflab_value__", None)
    return get(x) if get is not None else x


def close(actual, expected, *, rtol: float = 1e-6, atol: float = 1e-8, name: str = "value", points=None) -> bool:
    """Pass when ``actual`` matches ``expected`` elementwise (same shape, no NaN):
    |a - e| <= atol + rtol * |e|. The exercises' checks (course infrastructure, not taught in a lesson)."""
    try:
        a = to_floats(_value(actual))
    except Exception as e:  # noqa: BLE001
        return _record(name, False, f"could not read the result as numbers ({type(e).__name__})", points)
    b = to_floats(expected)
    if _shape(a) != _shape(b):
        return _record(name, False, f"expected shape {_shape(b)}, got {_shape(a)}", points)
    fa, fb = _flatten(a, []), _flatten(b, [])
    for i, (x, y) in enumerate(zip(fa, fb)):
        try:
            ok = _is_close(x, y, rtol, atol)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            where = f" at position {i}" if _len(fa) > 1 else ""
            return _record(name, False, f"got {x!r}{where}", points, expected=f"{y!r}")
    return _record(name, True, "", points)


def equal(actual, expected, *, name: str = "value", points=None) -> bool:
    """Pass when ``actual`` equals ``expected`` exactly (after conversion to Python values): for
    booleans, integers, strings and values exact by construction. The exercises' checks (course infrastructure, not taught in a lesson)."""
    try:
        a = to_floats(_value(actual))
    except Exception as e:  # noqa: BLE001
        return _record(name, False, f"could not read the result ({type(e).__name__})", points)
    b = to_floats(expected)
    if a == b:
        return _record(name, True, "", points)
    fa, fb = (_flatten(a, []), _flatten(b, [])) if _isinstance(a, list) and _isinstance(b, list) else ([a], [b])
    if _len(fa) == _len(fb) and _len(fa) > 1:
        i = next(k for k, (x, y) in enumerate(zip(fa, fb)) if x != y)
        return _record(name, False, f"got {fa[i]!r} at position {i}", points, expected=f"{fb[i]!r}")
    return _record(name, False, f"got {a!r}", points, expected=f"{b!r}")


def true(condition, *, name: str, msg: str = "condition is false", points=None) -> bool:
    """Pass when ``condition`` is the Python value True (a one-element array counts too). The exercises' checks (course infrastructure, not taught in a lesson)."""
    try:
        v = to_floats(_value(condition))
        v = _flatten(v, []) if _isinstance(v, list) else [v]
        ok = _len(v) == 1 and v[0] is not None and bool(v[0]) and v[0] == v[0]
    except Exception:  # noqa: BLE001
        ok = False
    return _record(name, ok, "" if ok else msg, points)


def finite(actual, *, name: str = "finite values", points=None) -> bool:
    """Pass when every element is a finite number (no NaN, no infinity). The exercises' checks (course infrastructure, not taught in a lesson)."""
    try:
        actual = _value(actual)
        vals = _flatten(to_floats(actual), []) if not _isinstance(actual, (int, _float)) else [actual]
        bad = [v for v in vals if not _isfinite(_float(v))]
    except Exception as e:  # noqa: BLE001
        return _record(name, False, f"could not read the result ({type(e).__name__})", points)
    return _record(name, not bad, "" if not bad else f"found non-finite values {bad[:3]!r}", points)


def raises(exc_type, fn, *args, name: str = "raises", points=None, **kwargs) -> bool:
    """Pass when ``fn(*args, **kwargs)`` raises ``exc_type`` (a clear error, not a NaN). When graded,
    the check also needs an earlier call of the same student function to have returned a result:
    a function that raises on every input rejects bad input too, and earns nothing for it. The
    exercises' checks (course infrastructure, not taught in a lesson)."""
    returned = getattr(type(fn), "__preflab_returned__", None)
    try:
        fn(*args, **kwargs)
    except exc_type:
        if returned is not None and not returned(fn):
            return _record(name, False, f"{exc_type.__name__} was raised, but no call of this function has returned a "
                           "result yet: an input check earns its points once the function works on valid input", points)
        return _record(name, True, "", points)
    except NotImplementedError:
        return _record(name, False, "not implemented yet", points)
    except Exception as e:  # noqa: BLE001
        return _record(name, False, f"expected {exc_type.__name__}, got {type(e).__name__}: {e}", points)
    return _record(name, False, f"expected {exc_type.__name__}, nothing was raised", points)


_KINDS = {"float": (_float,), "int": (int,), "bool": (bool,), "str": (str,), "list": (list,), "tuple": (tuple,),
          "dict": (dict,)}


def kind(value, expected: str, *, name: str = "type of the result", points=None) -> bool:
    """Pass when ``value`` is of the named kind: "ndarray", "tensor", "float" (a Python or numpy
    float), "int", "bool", "str", "list", "tuple", "dict", "lm" (a ``transformers``
    GPT2LMHeadModel, the course's policy) or "reward_model" (``preflab.reward_model.RewardModel``).
    The exercises' checks (course infrastructure, not taught in a lesson)."""
    value = _value(value)
    if expected in ("lm", "reward_model"):
        cls = ("transformers", "GPT2LMHeadModel") if expected == "lm" else ("preflab.reward_model", "RewardModel")
        mod = _sys.modules.get(cls[0])
        target = getattr(mod, cls[1], None) if mod is not None else None
        ok = target is not None and _isinstance(value, target)
        return _record(name, ok, "" if ok else f"got a {type(value).__name__}", points, expected=cls[1])
    if expected == "ndarray":
        ok = _ndarray is not None and _isinstance(value, _ndarray)
    elif expected == "tensor":
        torch = _sys.modules.get("torch")
        ok = torch is not None and _isinstance(value, torch.Tensor)
    elif expected == "float":
        ok = _isinstance(value, _float) or (_ndarray is not None and type(value).__module__ == "numpy"
                                            and getattr(value, "shape", None) == () and "float" in type(value).__name__)
    elif expected == "int":
        ok = _isinstance(value, int) and not _isinstance(value, bool)
    elif expected in _KINDS:
        ok = _isinstance(value, _KINDS[expected])
    else:
        raise ValueError(f"unknown kind {expected!r}")
    return _record(name, ok, "" if ok else f"got a {type(value).__name__}", points, expected=expected)


# ----------------------------------------------------------------------------- calls
class CallFailed(Exception):
    """A call made by :func:`run` or :func:`grad` raised; ``.error`` says what. The exercises' checks (course infrastructure, not taught in a lesson)."""


def _remote(fn):
    return getattr(type(fn), "__preflab_remote__", None)


def run(fn, *args, grad_wrt=(), return_inputs: bool = False, **kwargs) -> dict:
    """Call ``fn`` and return what happened as :func:`preflab.wire.call_local` describes it
    (``ok``, ``value``, ``grads``, ``inputs``, ``warnings``, ``error``). In grader mode a
    student's function is called across the process boundary, with the same result. The exercises' checks (course infrastructure, not taught in a lesson)."""
    call = _remote(fn)
    if call is not None:
        return call(fn, list(args), dict(kwargs), tuple(grad_wrt), bool(return_inputs))
    return _wire.call_local(fn, list(args), dict(kwargs), grad_wrt=tuple(grad_wrt), return_inputs=return_inputs)


def _raise_from(res: dict):
    err = res.get("error") or {}
    import builtins

    base = getattr(builtins, str(err.get("base", "Exception")), Exception)
    if not (_isinstance(base, type) and issubclass(base, Exception)):
        base = Exception
    cls = type(str(err.get("type", "Error")), (base,), {})
    raise cls(str(err.get("message", "")))


def grad(fn, *args, wrt=(0,), **kwargs):
    """``(value, grads)``: the result of ``fn(*args, **kwargs)`` and, by autograd, the gradients of
    its sum with respect to the positional arguments numbered in ``wrt`` (floating-point tensors).
    Raises what ``fn`` raised. The exercises' checks (course infrastructure, not taught in a lesson)."""
    res = run(fn, *args, grad_wrt=tuple(wrt), **kwargs)
    if not res.get("ok"):
        _raise_from(res)
    return res["value"], res["grads"]


def _raise_call(fn, res: dict):
    try:
        _raise_from(res)
    except Exception as e:
        name = getattr(fn, "_name", None) if _remote(fn) is not None else getattr(fn, "__name__", None)
        if name:
            e.preflab_function = name
        raise


def call(fn, *args, **kwargs):
    """``(value, inputs)``: the result of ``fn(*args, **kwargs)`` and its positional arguments as
    they are after the call (to check, from one call, both what a training function returned and
    that it left, say, the reference model alone). Raises what ``fn`` raised. In grader mode the
    call crosses to the student's kernel like any other; in the kernel it is a plain call (so an
    error shows its own traceback). The exercises' checks (course infrastructure, not taught in a lesson)."""
    if _remote(fn) is None:
        return fn(*args, **kwargs), list(args)
    res = run(fn, *args, return_inputs=True, **kwargs)
    if not res.get("ok"):
        _raise_call(fn, res)
    return res["value"], res["inputs"]


def fingerprint(x) -> str:
    """A short exact digest of a value (a model's weights, a tensor, an array, a list...): equal
    fingerprints mean equal values, bit for bit. Take one *before* a call and compare it with one
    of the argument after it (see :func:`call`) to check that the call left it unchanged (in a
    kernel the argument after the call is the same object, so only a fingerprint taken before
    it remembers how it was). The exercises' checks (course infrastructure, not taught in a lesson)."""
    import hashlib
    import json as _json

    v = to_floats(x)
    text = _json.dumps(v, sort_keys=True, default=repr, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _same(a, b) -> bool:
    if _isinstance(a, list) and _isinstance(b, list):
        return _len(a) == _len(b) and all(_same(x, y) for x, y in zip(a, b))
    if _isinstance(a, dict) and _isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if _isinstance(a, _float) and _isinstance(b, _float) and _isnan(a) and _isnan(b):
        return True
    return a == b


def unchanged(fn, *args, name: str = "does not modify its inputs", points=None, **kwargs) -> bool:
    """Pass when ``fn(*args, **kwargs)`` runs without error and leaves its positional arguments
    (arrays, tensors, lists) exactly as they were (the comparison is exact by construction: the
    same numbers, copied). The exercises' checks (course infrastructure, not taught in a lesson)."""
    before = [to_floats(_copy.deepcopy(a)) for a in args]
    res = run(fn, *args, return_inputs=True, **kwargs)
    if not res.get("ok"):
        err = res.get("error") or {}
        return _record(name, False, f"raised {err.get('type')}: {err.get('message', '')}"[:300], points)
    after = [to_floats(a) for a in res["inputs"]]
    for i, (x, y) in enumerate(zip(before, after)):
        if not _same(x, y):
            return _record(name, False, f"argument {i} was changed by the call (work on a copy)", points)
    return _record(name, True, "", points)


def rng(seed: int):
    """A private ``random.Random`` (captured at import) for reproducible fresh inputs. The exercises' checks (course infrastructure, not taught in a lesson)."""
    return _Random(seed)


def sigmoid(x: float) -> float:
    """The logistic function in plain Python, stable at both ends. The exercises' checks (course infrastructure, not taught in a lesson)."""
    if x >= 0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


def softplus(x: float) -> float:
    """log(1 + e^x) in plain Python, stable at both ends (−log σ(−x)). The exercises' checks (course infrastructure, not taught in a lesson)."""
    return x + log1p(exp(-x)) if x > 0 else log1p(exp(x))


def mean(values) -> float:
    """The mean of plain floats (math.fsum). The exercises' checks (course infrastructure, not taught in a lesson)."""
    values = list(values)
    return _fsum(values) / _len(values)


def in_colab() -> bool:
    """Whether this kernel runs on Colab. The exercises' checks (course infrastructure, not taught in a lesson)."""
    return "google.colab" in _sys.modules


def summary() -> bool:
    """Print how many checks ran in this kernel and what to do next; True when all passed. The exercises' checks (course infrastructure, not taught in a lesson)."""
    if GRADER is not None:
        return True
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
    """Forget earlier results (used by tests). The exercises' checks (course infrastructure, not taught in a lesson)."""
    _results.clear()
