"""Training helpers: SGD (with momentum), Adam, and global-norm gradient clipping. Optimisers
update `Parameter.data` in place, so compiled programs never need rebuilding."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np

from . import validation as check
from .errors import ArgumentError, ArgumentTypeError, NumericError
from .serialization import checked_state

CHUNK = 1 << 13  # elements per piece of an in-place update (its one temporary: 32 KiB at f32)


def subtract_scaled(data: np.ndarray, step: np.ndarray, lr: float) -> None:
    """data -= lr * step in place, bit for bit, in pieces of CHUNK elements: the temporary
    `lr * step` is one piece, not a copy of the whole (packed) parameter array, which would be
    the peak of a training loop's update. An array of at most CHUNK elements, once numba is
    imported (a numba or "auto" program ran), is updated by one numba loop with no temporary
    (backends/numba_update.py: same bits; `inplace_kernel`)."""
    if data.size <= CHUNK:
        kernel = _KERNEL[0] if _KERNEL else inplace_kernel()
        if (
            kernel is not None
            and type(lr) is float  # (a NumPy scalar lr is not cast to the arrays' dtype first)
            and data.dtype is step.dtype
            and data.dtype.char in "fd"
            and data.shape == step.shape
            and data.flags.c_contiguous
            and step.flags.c_contiguous
            and (data is step or not np.may_share_memory(data, step))
        ):
            try:
                kernel(data, step, data.dtype.type(lr))
                return
            except Exception:  # noqa: BLE001 (numba failed to compile or load it: it never ran)
                _KERNEL[:] = [_uncached(kernel)]  # (once; then NumPy's form)
        data -= lr * step
        return
    flat_d, flat_s = data.reshape(-1), step.reshape(-1)
    if (
        not np.may_share_memory(flat_d, data)  # reshape copied: not contiguous
        or flat_s.shape != flat_d.shape
        or np.may_share_memory(flat_d, flat_s)
    ):
        data -= lr * step
        return
    scratch = np.empty(CHUNK, dtype=np.result_type(lr, step))
    for a in range(0, flat_d.size, CHUNK):
        piece = flat_d[a : a + CHUNK]
        tmp = np.multiply(flat_s[a : a + CHUNK], lr, out=scratch[: piece.size])
        np.subtract(piece, tmp, out=piece)


def update_temp_bytes(nbytes: list[int], itemsize: int) -> int:
    """Most bytes `subtract_scaled` allocates at once updating arrays of `nbytes` each (one
    piece of CHUNK elements, or the whole `lr * step` of an array that small; none for arrays
    that small once the in-place kernel is there): the update's share of a training loop's
    peak (compile_report)."""
    largest = max(nbytes, default=0)
    if largest <= CHUNK * itemsize and (_KERNEL[0] if _KERNEL else inplace_kernel()):
        return 0
    return min(largest, CHUNK * itemsize)


_KERNEL: list = []  # [numba_update.sub_scaled or None] once decided


def _uncached(kernel):
    """The kernel compiled again without numba's disk cache (an entry written for the package
    imported under another module name fails to load), once; else None (NumPy's form)."""
    if _RETRIED or not hasattr(kernel, "py_func"):
        return None
    _RETRIED.append(True)
    try:
        from numba import njit

        return njit(nogil=True, error_model="numpy")(kernel.py_func)
    except Exception:  # noqa: BLE001
        return None


_RETRIED: list = []


def inplace_kernel():
    """backends/numba_update.sub_scaled once numba is imported in this process (fully: not
    while a worker thread is importing it); None before, and without numba. The update never
    imports numba itself: a NumPy-only process keeps NumPy's update."""
    numba = sys.modules.get("numba")
    spec = getattr(numba, "__spec__", None)
    if numba is None or getattr(spec, "_initializing", False) or not hasattr(numba, "njit"):
        return None
    from .backends import numba_update

    _KERNEL.append(numba_update.sub_scaled)
    return _KERNEL[0]


class Optimizer:
    def __init__(self, params: Iterable, lr: float):
        owner = f"optim.{type(self).__name__}"
        self.params = check.parameters(owner, params)
        self.lr = check.number(owner, "lr", lr, "positive")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def _writeable(self) -> None:
        """Every parameter's .data writeable, checked before a step changes any: a read-only
        one (memory-mapped weights for inference) failed mid-step with NumPy's bare
        ValueError, the parameters before it already stepped."""
        for k, p in enumerate(self.params):
            if not p.data.flags.writeable:
                raise ArgumentError(
                    f"optim.{type(self).__name__}.step: params[{k}] ({p.name!r}) has a read-only "
                    f".data; an optimizer updates it in place (pass p.data.copy() to train it)"
                )

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._load(state, {})

    def _load(self, state: dict[str, np.ndarray], buffers: dict[str, np.ndarray]) -> None:
        """Copy state's arrays into `buffers` once all match (names, shapes, finite floats):
        before, a missing one raised KeyError and a (1,)-shaped one was broadcast silently."""
        for buffer, arr in checked_state(f"optim.{type(self).__name__}", buffers, state):
            buffer[...] = arr


class SGD(Optimizer):
    """data -= lr * (momentum buffer), buffer = momentum * buffer + grad."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0):
        super().__init__(params, lr)
        self.momentum = check.number("optim.SGD", "momentum", momentum, "[0, 1)")
        self.buffers = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        self._writeable()
        for p, buf in zip(self.params, self.buffers):
            if self.momentum:
                buf *= self.momentum
                buf += p.grad
                subtract_scaled(p.data, buf, self.lr)
            else:
                subtract_scaled(p.data, p.grad, self.lr)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"momentum.{k}": b for k, b in enumerate(self.buffers)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._load(state, self.state_dict())


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ArgumentTypeError(
                f"optim.Adam: betas must be a pair (beta1, beta2), got {check.got(betas)}"
            )
        self.beta1, self.beta2 = (
            check.number("optim.Adam", f"betas[{k}]", b, "[0, 1)") for k, b in enumerate(betas)
        )
        self.eps = check.number("optim.Adam", "eps", eps, "positive")
        self.t = 0
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        self._writeable()
        self.t += 1
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * p.grad
            v *= self.beta2
            v += (1 - self.beta2) * p.grad * p.grad
            p.data -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t)}
        out.update({f"m.{k}": m for k, m in enumerate(self.m)})
        out.update({f"v.{k}": v for k, v in enumerate(self.v)})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        buffers = self.state_dict()
        t = buffers.pop("t")
        if hasattr(state, "items") and "t" in state:
            t = np.asarray(state["t"])
            if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
                raise ArgumentError(
                    f"optim.Adam.load_state_dict: 't' must be the step count, an integer >= 0,"
                    f" got {check.got(state['t'])}"
                )
            state = {k: v for k, v in state.items() if k != "t"}
        else:
            buffers["t"] = t  # (reported missing with the others)
        self._load(state, buffers)
        self.t = int(t)


def _squares(g: np.ndarray) -> float:
    """The sum of g's squared entries, without a temporary of g's size when g is contiguous
    (a dot product: what a training loop holds after backward stays the compile report's)."""
    if g.flags.c_contiguous:
        flat = g.reshape(-1)
        return float(np.dot(flat, flat).real)
    return float(np.sum(g * g))


def clip_grad_norm(params: Iterable, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most `max_norm`; returns the norm before."""
    params = check.parameters("optim.clip_grad_norm", params)
    max_norm = check.number("optim.clip_grad_norm", "max_norm", max_norm, "positive")
    norm = float(np.sqrt(sum(_squares(p.grad) for p in params)))
    if not np.isfinite(norm):
        raise NumericError(f"gradient norm is {norm}; the loss or a gradient is NaN/Inf")
    if norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for p in params:
            p.grad *= scale
    return norm
