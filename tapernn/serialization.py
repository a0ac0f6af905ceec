"""Saving and loading parameters as .npz (plain arrays keyed by dotted names; never pickle),
written whole or not at all, and read back only if every array is finite real floating point."""

from __future__ import annotations

import os
import warnings
from typing import IO, Any

import numpy as np

from .errors import (
    ArgumentError,
    ArgumentTypeError,
    DTypeError,
    NumericError,
    ShapeError,
    StateError,
    TapernnError,
)
from .fileio import atomic_write
from .validation import got


def npz_path(path: str | os.PathLike) -> str:
    """`path` with `.npz` added when it has another ending (what np.savez writes); a folder is
    refused by name (it would have become `folder.npz` beside it, or `folder/.npz`)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise ArgumentTypeError(f"expects a file path (str or os.PathLike), got {got(path)}")
    text = os.fsdecode(os.fspath(path))
    if not text:
        raise ArgumentError("expects a file path, got an empty one; give e.g. 'model.npz'")
    if os.path.isdir(text) or text.endswith((os.sep, "/")):
        raise StateError(
            f"{text!r} is a folder; give the parameters' file, such as "
            f"{os.path.join(text, 'model.npz')!r}"
        )
    return text if text.endswith(".npz") else text + ".npz"


def save(module: Any, path: str | os.PathLike) -> None:
    """Write `module.state_dict()` to `path` (`.npz` is added when missing, as np.savez does).

    Torch7's `torch.save(path, module)`, restricted to parameters and buffers (state a module
    estimated, NCEModule's Z; not settings, not a recurrent module's remembered state). The
    file is replaced whole or not at all: a temporary file in the same directory is written,
    fsynced and renamed over it.
    Parameters holding NaN or Inf are refused (NumericError, the previous file is kept): a
    diverged model must not overwrite a good checkpoint."""
    _expect_module("save", module)
    where = npz_path(path)
    state = module.state_dict()
    check_arrays(state, f"{module.describe()} (not saved)")
    try:
        atomic_write(where, lambda f: write_npz(f, state))
    except OSError as e:
        raise StateError(f"cannot write parameters to {where!r}: {e.strerror or e}") from None


def _expect_module(fn: str, module: Any) -> None:
    if isinstance(module, type) or not callable(getattr(module, "state_dict", None)):
        raise ArgumentTypeError(f"tn.{fn} expects a module (nn.Module), got {got(module)}")


def write_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    np.savez(f, **arrays)


def load_into(module: Any, path: str | os.PathLike) -> Any:
    """Load parameters and buffers saved by `save` into `module` (names and shapes must match; a
    file written before buffers were saved loads with a warning, see load_state); `.npz` is
    added to `path` when missing. An unreadable, truncated or corrupted file raises StateError,
    NaN/Inf values NumericError, non-float arrays DTypeError, each naming the file."""
    _expect_module("load_into", module)
    where = npz_path(path)
    state = read_npz(where)
    check_arrays(state, repr(where))
    try:
        return module.load_state_dict(state)
    except TapernnError as e:
        raise type(e)(f"{where!r}: {e}") from None


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, fully read (so CRC errors show here), or StateError."""
    where = os.fspath(path)
    try:
        with np.load(where, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise StateError(
                    f"{where!r} is a single .npy array, not an .npz file of "
                    f"named arrays written by tapernn.save"
                )
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise StateError(f"cannot read parameters: no such file {where!r}") from None
    except StateError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise StateError(
                f"cannot read parameters from {where!r}: not an .npz archive of "
                f"arrays (truncated, corrupted or another kind of file; tapernn "
                f"never reads pickles)"
            ) from None
        raise _damaged(where, e) from None
    except AttributeError:  # np.load returned something without __enter__ (an old format)
        raise StateError(f"{where!r} is not an .npz file written by tapernn.save") from None
    except Exception as e:  # noqa: BLE001  # BadZipFile, EOFError, zlib.error, OSError, ...
        raise _damaged(where, e) from None


def _damaged(where: str, e: BaseException) -> StateError:
    size = os.path.getsize(where) if os.path.exists(where) else None
    detail = "it is empty" if size == 0 else f"{type(e).__name__}: {e}"
    return StateError(
        f"cannot read parameters from {where!r}: the file is truncated, corrupted "
        f"or not an .npz file ({detail})"
    )


def check_arrays(arrays: dict[str, np.ndarray], what: str) -> None:
    """Every array real floating point and finite, or DTypeError / NumericError naming it."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind != "f":
            raise DTypeError(
                f"{what}: array {name!r} has dtype {a.dtype}, expected float32 or "
                f"float64 parameters"
            )
        if not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise NumericError(
                f"{what}: array {name!r} holds {bad} NaN/Inf value(s) of "
                f"{a.size}; parameters must be finite"
            )


def checked_state(
    owner: str, targets: dict[str, np.ndarray], state: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each array of `targets` (a model's parameters' data, an optimizer's buffers) with its
    array of `state` cast to the target's dtype, once every array has passed (so a bad one loads
    none: no half-loaded model): names match, shapes equal, values real floating point
    (DTypeError: ints, bools, complex, objects would be cast silently, as PyTorch's copy_ does)
    and finite, also after the cast (NumericError: a NaN parameter, or a float64 value beyond
    float32's range read into a float32 model, which the cast turns into Inf). A float32 state
    loads into a float64 model and back: the model keeps its dtype (PyTorch's load_state_dict;
    module.astype converts the model)."""
    if not hasattr(state, "keys"):
        raise ArgumentTypeError(
            f"{owner}.load_state_dict: expected a dict of arrays (from state_dict()), "
            f"got {got(state)}"
        )
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise StateError(
            f"state dict does not match {owner}: missing {missing}, unexpected {unexpected}"
        )
    loads = []
    for name, target in targets.items():
        try:
            arr = np.asarray(state[name])
        except Exception as e:  # noqa: BLE001  # ragged lists and the like
            raise DTypeError(
                f"{owner}.load_state_dict: {name!r} is not an array ({type(e).__name__}: {e})"
            ) from None
        if arr.shape != target.shape:
            raise ShapeError(
                f"{owner}.load_state_dict: {name!r}: expected shape {target.shape}, got {arr.shape}"
            )
        check_arrays({name: arr}, f"{owner}.load_state_dict")
        with np.errstate(over="ignore"):  # (the overflow is the error below)
            cast = arr.astype(target.dtype, copy=False)
        if cast is not arr and not np.isfinite(cast).all():
            raise NumericError(
                f"{owner}.load_state_dict: {name!r} holds values beyond {target.dtype}'s "
                f"range (largest magnitude {np.abs(arr).max():.6g}); the model is {target.dtype}"
            )
        loads.append((target, cast))
    return loads


def buffers_of(module: Any, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """Each buffer of `module`'s tree (the fields its classes name in `buffers`) as dotted name
    -> (owning module, field); a module shared under two names is listed once (first name), as
    named_parameters lists a shared parameter."""
    out: dict[str, tuple[Any, str]] = {}
    seen: set[int] = set()

    def walk(m: Any, prefix: str) -> None:
        if id(m) not in seen:
            seen.add(id(m))
            out.update({prefix + field: (m, field) for field in type(m).buffers})
            for name, child in m.named_children():
                walk(child, f"{prefix}{name}.")

    walk(module, prefix)
    return out


def state_of(module: Any) -> dict[str, np.ndarray]:
    """Module.state_dict: copies of the parameters' data, then of the buffers' values."""
    state = {name: p.data.copy() for name, p in module.named_parameters().items()}
    for name, (owner, field) in buffers_of(module).items():
        state[name] = np.array(getattr(owner, field))
    return state


def load_state(module: Any, state: Any) -> Any:
    """Module.load_state_dict: every parameter and buffer checked (checked_state) before any is
    written. A buffer missing from `state` is the one difference allowed -- a file saved before
    buffers were (NCEModule's Z was not saved): its module keeps its value and a UserWarning
    names it (PyTorch fills a missing BatchNorm num_batches_tracked the same way)."""
    buffers = buffers_of(module)
    absent = [n for n in buffers if n not in state] if hasattr(state, "keys") else []
    targets = {name: p.data for name, p in module.named_parameters().items()}
    targets.update(
        (n, np.asarray(getattr(m, f))) for n, (m, f) in buffers.items() if n not in absent
    )
    loads = checked_state(module.describe(), targets, state)
    for name, (data, value) in zip(targets, loads):
        if name not in buffers:
            data[...] = value
        else:
            owner, field = buffers[name]
            setattr(owner, field, float(value) if value.ndim == 0 else value.copy())
    if absent:
        kept = ", ".join(f"{n} = {getattr(*buffers[n])}" for n in absent)
        warnings.warn(
            f"{module.describe()}.load_state_dict: the state dict holds no buffer "
            f"{', '.join(map(repr, absent))} (saved before tapernn saved buffers?): the module "
            f"keeps its value ({kept}; NCEModule's z <= 0 estimates Z again on its next "
            f"training batch)",
            UserWarning,
            stacklevel=3,
        )
    return module
