"""Training checkpoints for `tapernn train`: a directory holding model.npz, optimizer.npz,
states.npz (remembered RNN state) and config.json (options, vocabulary, position, RNG state).
config.json is written last, so its presence marks a complete checkpoint."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import random as tn_random
from .serialization import load_into, save

FORMAT = "tapernn-train-checkpoint-1"
FILES = ("model.npz", "optimizer.npz", "states.npz", "config.json")


class CheckpointError(Exception):
    """A checkpoint directory that cannot be written or read (one-line message)."""


def ensure_writable(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"checkpoint directory {os.fspath(directory)!r} is not writable: "
                              f"{e.strerror or e}") from None
    return path


def save_checkpoint(directory: str | os.PathLike, lm: Any, optimizer: Any, info: dict) -> None:
    """Write the model, optimizer, remembered states and `info` (+ the library RNG state)."""
    path = Path(directory)
    states = lm.remembered_states()
    arrays = {f"cell{k}.{j}": a for k, st in enumerate(states) if st is not None
              for j, a in enumerate(st)}
    config = dict(info, format=FORMAT, rng=tn_random.generator().bit_generator.state,
                  states=[None if st is None else len(st) for st in states])
    try:
        _atomic(path / "model.npz", lambda f: save(lm.model, f))
        _atomic(path / "optimizer.npz", lambda f: np.savez(f, **optimizer.state_dict()))
        _atomic(path / "states.npz", lambda f: np.savez(f, **arrays))
        _atomic(path / "config.json", lambda f: f.write(json.dumps(config, indent=1).encode()))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint to {os.fspath(path)!r}: "
                              f"{e.strerror or e}") from None


def _atomic(target: Path, write) -> None:
    # write then rename: an interrupted save leaves the previous file intact
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; checkpoints need not be
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint to resume in {os.fspath(directory)!r} "
                              f"(config.json is missing)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {os.fspath(path)!r}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{os.fspath(path)!r} is not a tapernn train checkpoint")
    return config


def restore_checkpoint(directory: str | os.PathLike, config: dict, lm: Any, optimizer: Any) -> None:
    """Load what `save_checkpoint` wrote into a freshly built model and optimizer."""
    path = Path(directory)
    try:
        load_into(lm.model, path / "model.npz")
        with np.load(path / "optimizer.npz", allow_pickle=False) as data:
            optimizer.load_state_dict({k: data[k] for k in data.files})
        with np.load(path / "states.npz", allow_pickle=False) as data:
            states = [None if n is None else tuple(data[f"cell{k}.{j}"] for j in range(n))
                      for k, n in enumerate(config["states"])]
    except Exception as e:  # noqa: BLE001  # a damaged checkpoint: one line, not a traceback
        raise CheckpointError(f"cannot restore checkpoint from {os.fspath(path)!r}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    lm.restore_states(states)
    tn_random.generator().bit_generator.state = config["rng"]
