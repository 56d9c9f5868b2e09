"""A pretend GPU on a CPU-only machine: catches device-mismatch bugs before a real GPU sees them.

On a Colab GPU, ``load_policy`` puts the model on CUDA; a lesson or library function that then
feeds it tensors still on the CPU (``encode()`` builds them there) dies with "Expected all tensors
to be on the same device". On a CPU-only machine such code runs fine, so the bug ships. This
module makes the CPU behave like a machine with one GPU, ``cuda:0``:

* ``torch.cuda.is_available()`` says True, so ``load_policy`` takes the GPU path on its own;
* a tensor moved with ``.to("cuda")``/``.to(model.device)``/``.cuda()`` or created with
  ``device="cuda"`` is a copy on the CPU *tagged* as on the GPU; its ``.device`` reports ``cuda:0``;
  a module moved to the GPU has its parameters and buffers tagged; ``.cpu()``/``.to("cpu")``
  gives an untagged copy;
* every torch operation propagates the tag (any tagged input: tagged outputs) and raises
  RuntimeError, as CUDA would, when it mixes a tagged tensor with an untagged one that is not a
  0-d CPU scalar (CUDA accepts those); ``.numpy()`` and ``np.asarray`` of a tagged tensor raise
  TypeError, as they do for CUDA tensors.

All arithmetic still runs on the CPU, so results are the real numbers and lessons run end to end.
It works at the level of torch's Python API (a TorchFunctionMode), where device rules are
checked for every operator a lesson or the library calls; ops that C++ runs internally inherit
the device of their inputs, as they would on a GPU.

    import fakedevice
    fakedevice.install()      # for the rest of the process (a notebook kernel); or
    with fakedevice.FakeCuda(): ...
"""

from __future__ import annotations

import os

import torch
from torch.overrides import TorchFunctionMode

FAKE = torch.device("cuda", 0)
_TAG = "_preflab_on_fake_cuda"

_GETTERS = {torch.Tensor.device.__get__, torch.Tensor.is_cuda.__get__, torch.Tensor.is_cpu.__get__}
# read-only queries that return no tensor: no check, no tag
_PASS = {torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.requires_grad.__get__,
         torch.Tensor.ndim.__get__, torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel,
         torch.Tensor.__len__, torch.Tensor.is_floating_point, torch.Tensor.is_complex,
         torch.Tensor.requires_grad.__set__, torch.Tensor.requires_grad_, torch.Tensor.tolist,
         torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
         torch.Tensor.__index__, torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.__hash__,
         torch.Tensor.data_ptr, torch.Tensor.element_size, torch.Tensor.stride, torch.Tensor.is_contiguous,
         torch.Tensor.storage_offset, torch.Tensor.__reduce_ex__, torch.Tensor.untyped_storage,
         torch.Tensor.grad_fn.__get__, torch.Tensor.is_leaf.__get__, torch.Tensor.layout.__get__,
         torch.Tensor.is_sparse.__get__, torch.Tensor.__getstate__,
         torch._has_compatible_shallow_copy_type}
# ops that may mix devices on a real GPU: indexing with CPU indices, copy_ across devices (t[idx] = v: below)
_MAY_MIX = {torch.Tensor.__getitem__, torch.Tensor.copy_}


def on_fake(t) -> bool:
    """Is ``t`` a tensor tagged as living on the pretend GPU?"""
    return isinstance(t, torch.Tensor) and t.__dict__.get(_TAG, False)


def _tag(x, value: bool = True):
    if isinstance(x, torch.Tensor):
        x.__dict__[_TAG] = value
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tag(y, value)
    return x


def _tensors(x, out):
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors(y, out)
    return out


def _is_fake_device(d) -> bool:
    if isinstance(d, str):
        return d.startswith("cuda")
    if isinstance(d, torch.device):
        return d.type == "cuda"
    return isinstance(d, int) and not isinstance(d, bool)  # .to(0) means cuda:0


def _is_cpu(d) -> bool:
    return (isinstance(d, str) and d.startswith("cpu")) or (isinstance(d, torch.device) and d.type == "cpu")


def _mismatch(func, a, b):
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                       f"cuda:0 and cpu! (in {name}: a {tuple(b.shape)} tensor on the CPU meets a "
                       f"{tuple(a.shape)} tensor on the (pretend) GPU; move it with .to(model.device))")


class FakeCuda(TorchFunctionMode):
    """The pretend GPU (see the module docstring). Entering it also makes ``torch.cuda.is_available()`` True."""

    def __enter__(self):
        # the `kernels` package probes a real GPU's compute capability when a model is moved or put in
        # train mode; the pretend GPU has none (transformers honours this switch at load time)
        self._hub_kernels = os.environ.get("USE_HUB_KERNELS")
        os.environ["USE_HUB_KERNELS"] = "0"
        self._is_available = torch.cuda.is_available
        torch.cuda.is_available = lambda: True
        # nn.Parameter(data) (and so copy.deepcopy of a model) builds its tensor outside torch's Python API:
        # a parameter made from a tensor on the GPU is on the GPU
        self._param_new = torch.nn.Parameter.__dict__["__new__"]
        make = self._param_new.__func__ if isinstance(self._param_new, staticmethod) else self._param_new

        def param_new(cls, data=None, requires_grad=True):
            p = make(cls, data, requires_grad)
            return _tag(p) if on_fake(data) else p

        torch.nn.Parameter.__new__ = staticmethod(param_new)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.cuda.is_available = self._is_available
        torch.nn.Parameter.__new__ = self._param_new
        if self._hub_kernels is None:
            os.environ.pop("USE_HUB_KERNELS", None)
        else:
            os.environ["USE_HUB_KERNELS"] = self._hub_kernels
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PASS:
            return func(*args, **kwargs)
        if func in _GETTERS:
            if on_fake(args[0]):
                return {"device": FAKE, "is_cuda": True, "is_cpu": False}[func.__self__.__name__]
            return func(*args, **kwargs)
        if func is torch.Tensor.numpy or func is torch.Tensor.__array__:
            if on_fake(args[0]):
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                                "the tensor to host memory first. (pretend GPU)")
            return func(*args, **kwargs)
        if func == torch.Tensor.data.__set__:
            func(*args, **kwargs)
            _tag(args[0], on_fake(args[1]))
            return None
        if func is torch.Tensor.cuda:
            return _tag(args[0].clone())
        if func is torch.Tensor.cpu:
            return _tag(args[0].clone(), False) if on_fake(args[0]) else func(*args, **kwargs)
        if func is torch.Tensor.to:
            return self._to(func, args, kwargs)
        if "device" in kwargs and _is_fake_device(kwargs["device"]):  # a factory: torch.zeros(..., device="cuda")
            kwargs = dict(kwargs, device="cpu")
            return _tag(func(*args, **kwargs))
        if "device" in kwargs and _is_cpu(kwargs["device"]):
            return func(*args, **kwargs)
        tensors = _tensors(args, _tensors(kwargs, []))
        fake = [t for t in tensors if on_fake(t)]
        if not fake:
            return func(*args, **kwargs)
        if func == torch.Tensor.__setitem__:  # t[idx] = v: the indices may be on the CPU, the value may not
            tensors = _tensors(args[2:], [])
        if func not in _MAY_MIX:
            for t in [args[0], *tensors] if func == torch.Tensor.__setitem__ else tensors:
                if not on_fake(t) and t.dim() > 0:
                    _mismatch(func, fake[0], t)
        out = func(*args, **kwargs)
        if func is torch.Tensor.copy_:
            return out
        return _tag(out)

    def _to(self, func, args, kwargs):
        self_, rest, kwargs = args[0], list(args[1:]), dict(kwargs)
        wanted = kwargs.get("device", rest[0] if rest and isinstance(rest[0], (str, torch.device)) else None)
        if wanted is not None and str(wanted).startswith("meta"):
            return func(*args, **kwargs)  # transformers 4.x builds models on the meta device first
        if rest and isinstance(rest[0], torch.Tensor):  # .to(other): other's device and dtype
            other = rest[0]
            out = func(self_, other.dtype, *rest[1:], **kwargs)
            return _tag(out.clone() if out is self_ else out, on_fake(other))
        if "device" in kwargs:
            target, kwargs["device"] = kwargs["device"], "cpu"
        elif rest and (isinstance(rest[0], (str, torch.device)) or _is_fake_device(rest[0])):
            target, rest[0] = rest[0], "cpu"
        else:  # .to(dtype) or .to(None, ...): stays where it is
            target = None
        out = func(self_, *rest, **kwargs)
        if target is None or (_is_fake_device(target) and on_fake(self_)):
            return _tag(out, on_fake(self_)) if out is not self_ else out
        if _is_fake_device(target):
            return _tag(out.clone() if out is self_ else out)
        if _is_cpu(target):
            return _tag(out.clone() if out is self_ else out, False) if on_fake(self_) else out
        raise ValueError(f"pretend GPU: unsupported device {target!r}")


_installed: FakeCuda | None = None


def install() -> FakeCuda:
    """Enter the pretend GPU for the rest of the process (a notebook kernel's first cell)."""
    global _installed
    if _installed is None:
        _installed = FakeCuda()
        _installed.__enter__()
    return _installed
