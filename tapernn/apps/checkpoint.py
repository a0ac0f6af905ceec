"""Training checkpoints for `tapernn train`, written whole or not at all: each save writes a new
generation directory (model.npz, optimizer.npz, states.npz, config.json and a manifest with the
step and each file's sha256), fsyncs it, then switches the one pointer file CURRENT by a rename.

    DIR/CURRENT              "gen-00000007": the checkpoint (replaced atomically)
    DIR/gen-00000007/        model.npz optimizer.npz states.npz config.json manifest.json

A crash at any point leaves CURRENT naming either the previous complete generation or the new
one; older generations are removed only after the switch. `load_checkpoint` checks every file
against the manifest and refuses, naming the file, a checkpoint whose parts disagree.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import random as tn_random
from ..errors import StateError, TapernnError
from ..fileio import atomic_write, crash_point, fsync_dir, write_file
from ..serialization import check_arrays, read_npz, write_npz

FORMAT = "tapernn-train-checkpoint-2"
LEGACY_FORMAT = "tapernn-train-checkpoint-1"  # files directly in DIR, no manifest (before 2026-12)
FILES = ("model.npz", "optimizer.npz", "states.npz", "config.json")
POINTER, MANIFEST = "CURRENT", "manifest.json"
_GENERATION = re.compile(r"gen-(\d{8,})$")


class CheckpointError(StateError):
    """A checkpoint directory that cannot be written or read (one-line message)."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` read and verified: `config` (the `info` given to save_checkpoint,
    plus format, rng, states), and the arrays of the model, optimizer and remembered states."""

    path: Path  # the generation directory (or, for a legacy checkpoint, DIR itself)
    config: dict
    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    legacy: bool = False  # written by an older tapernn: its parts could not be cross-checked

    @property
    def step(self) -> int:
        return int(self.config["step"])


def ensure_writable(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise CheckpointError(
            f"checkpoint directory {os.fspath(directory)!r} is a file, not a directory"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(
            f"checkpoint directory {os.fspath(directory)!r} is not writable: {e.strerror or e}"
        ) from None
    return path


# ---- saving --------------------------------------------------------------------------------------


def save_checkpoint(directory: str | os.PathLike, lm: Any, optimizer: Any, info: dict) -> Path:
    """Write the model, optimizer, remembered states and `info` (which must hold "step"; the
    library RNG state is added) as a new generation of `directory`, then make it current.
    Returns the generation directory. One writer per directory at a time."""
    path = Path(directory)
    states = lm.remembered_states()
    arrays = {
        f"cell{k}.{j}": a for k, st in enumerate(states) if st is not None for j, a in enumerate(st)
    }
    config = dict(
        info,
        format=FORMAT,
        rng=tn_random.generator().bit_generator.state,
        states=[None if st is None else len(st) for st in states],
    )
    model = lm.model.state_dict()
    check_arrays(model, f"checkpoint {os.fspath(path)!r} (not saved)")
    blobs = {
        "model.npz": _npz_bytes(model),
        "optimizer.npz": _npz_bytes(optimizer.state_dict()),
        "states.npz": _npz_bytes(arrays),
        "config.json": json.dumps(config, indent=1).encode(),
    }
    try:
        return _write_generation(path, blobs, int(info["step"]))
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoint to {os.fspath(path)!r}: {e.strerror or e}"
        ) from None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    write_npz(buffer, arrays)
    return buffer.getvalue()


def _write_generation(path: Path, blobs: dict[str, bytes], step: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in path.iterdir() if (m := _GENERATION.match(p.name))]
    gen = path / f"gen-{max(numbers, default=0) + 1:08d}"
    gen.mkdir()
    crash_point()
    for name, blob in blobs.items():
        write_file(gen / name, lambda f, blob=blob: f.write(blob))
    manifest = {
        "format": FORMAT,
        "step": step,
        "files": {
            name: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
            for name, blob in blobs.items()
        },
    }
    write_file(gen / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    fsync_dir(gen)  # the generation is complete on disk before anything points at it
    fsync_dir(path)
    atomic_write(path / POINTER, lambda f: f.write(f"{gen.name}\n".encode()))  # the switch
    _remove_old(path, keep=gen.name)
    return gen


def _remove_old(path: Path, keep: str) -> None:
    """After the switch: earlier generations, unfinished ones, a legacy checkpoint's files."""
    legacy = _is_legacy(path)
    for p in sorted(path.iterdir()):
        if (_GENERATION.match(p.name) and p.name != keep) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif (legacy and p.name in FILES) or p.name.startswith((".write-test-", f".{POINTER}.")):
            p.unlink(missing_ok=True)
        else:
            continue
        crash_point()
    fsync_dir(path)


def _is_legacy(path: Path) -> bool:
    try:
        return _json(path / "config.json").get("format") == LEGACY_FORMAT
    except CheckpointError:
        return False


# ---- loading -------------------------------------------------------------------------------------


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a checkpoint (current or legacy), complete or not."""
    path = Path(directory)
    return (path / POINTER).is_file() or (path / "config.json").is_file()


def load_checkpoint(directory: str | os.PathLike) -> Checkpoint:
    """Read and verify the current checkpoint of `directory` (every file against the manifest,
    the step of config.json against the manifest's); CheckpointError naming the file if not."""
    path = Path(directory)
    pointer = path / POINTER
    if not pointer.is_file():
        if (path / "config.json").is_file():
            return _load_legacy(path)
        raise CheckpointError(
            f"no checkpoint to resume in {os.fspath(directory)!r} ({POINTER} is missing)"
        )
    name = _read(pointer).decode("utf-8", "replace").strip()
    gen = path / name
    if not _GENERATION.match(name) or not gen.is_dir():
        raise CheckpointError(
            f"{os.fspath(pointer)!r} names {name!r}, which is not a "
            f"generation directory of this checkpoint"
        )
    manifest = _json(gen / MANIFEST)
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{os.fspath(gen / MANIFEST)!r} is not a tapernn checkpoint manifest")
    blobs = {}
    for file in FILES:
        blobs[file] = _verified(gen / file, manifest["files"].get(file))
    config = _json(gen / "config.json", blobs["config.json"])
    if config.get("step") != manifest.get("step"):
        raise CheckpointError(
            f"{os.fspath(gen / 'config.json')!r} is at step {config.get('step')}"
            f" but the manifest says step {manifest.get('step')}; refusing a "
            f"checkpoint whose parts disagree"
        )
    return _assemble(gen, config, legacy=False)


def _verified(file: Path, entry: Any) -> bytes:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{os.fspath(file)!r} is not listed in the manifest")
    blob = _read(file)
    if len(blob) != entry.get("bytes") or hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise CheckpointError(
            f"{os.fspath(file)!r} does not match the checkpoint's manifest "
            f"({len(blob)} bytes, manifest says {entry.get('bytes')}; sha256 "
            f"differs): it was changed or damaged; refusing to resume from it"
        )
    return blob


def _load_legacy(path: Path) -> Checkpoint:
    config = _json(path / "config.json")
    if config.get("format") != LEGACY_FORMAT:
        raise CheckpointError(
            f"{os.fspath(path / 'config.json')!r} is not a tapernn train checkpoint"
        )
    return _assemble(path, config, legacy=True)


def _assemble(where: Path, config: dict, legacy: bool) -> Checkpoint:
    for key in ("step", "options", "rng", "states"):
        if key not in config:
            raise CheckpointError(f"{os.fspath(where / 'config.json')!r} has no {key!r}")
    arrays = []
    for file in ("model.npz", "optimizer.npz", "states.npz"):
        try:
            arrays.append(read_npz(where / file))
        except TapernnError as e:
            raise CheckpointError(str(e)) from None
    try:
        check_arrays(arrays[0], repr(os.fspath(where / "model.npz")))
    except TapernnError as e:
        raise CheckpointError(str(e)) from None
    return Checkpoint(where, config, *arrays, legacy=legacy)


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {os.fspath(file)!r}: {e.strerror or e}") from None


def _json(file: Path, blob: bytes | None = None) -> dict:
    try:
        value = json.loads((_read(file) if blob is None else blob).decode("utf-8"))
    except ValueError as e:
        raise CheckpointError(f"cannot read {os.fspath(file)!r}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{os.fspath(file)!r} is not a tapernn checkpoint file")
    return value


def restore_checkpoint(checkpoint: Checkpoint, lm: Any, optimizer: Any) -> None:
    """Load what `load_checkpoint` read into a freshly built model and optimizer, and restore
    the library RNG state."""
    config = checkpoint.config
    try:
        lm.model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        states = [
            None if n is None else tuple(checkpoint.states[f"cell{k}.{j}"] for j in range(n))
            for k, n in enumerate(config["states"])
        ]
    except Exception as e:  # noqa: BLE001  # a checkpoint of another model: one line
        raise CheckpointError(
            f"cannot restore checkpoint from {os.fspath(checkpoint.path)!r}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    lm.restore_states(states)
    tn_random.generator().bit_generator.state = config["rng"]
    if checkpoint.legacy:
        print(
            f"note: {os.fspath(checkpoint.path)!r} was written by an older tapernn without a "
            f"manifest, so its files cannot be checked against each other; the next save "
            f"rewrites it in the current format",
            file=sys.stderr,
        )
