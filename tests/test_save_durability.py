"""tn.save / tn.load_into: one file name rule, whole-or-nothing writes (killed at every durable
step, and by SIGKILL at random times), damaged files -> StateError naming the file, non-finite
or non-float arrays refused."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import tapernn as tn
from tapernn import fileio, nn


def linear(seed: int, n: int = 3) -> nn.Module:
    tn.manual_seed(seed)
    return nn.Linear(n, 2)


def weights(m: nn.Module) -> dict:
    return m.state_dict()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def run_child(body) -> int:
    """Run body() in a forked child (which ends with os._exit); its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_save_and_load_into_agree_on_the_npz_suffix(tmp_path):
    a, b = linear(0), linear(1)
    tn.save(a, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    tn.load_into(b, tmp_path / "ckpt")  # was: "no such file"
    assert same(weights(a), weights(b))
    tn.load_into(linear(2), str(tmp_path / "ckpt.npz"))
    with pytest.raises(tn.StateError, match="cannot write parameters to .*no_dir"):
        tn.save(a, tmp_path / "no_dir" / "m")


@pytest.mark.parametrize("damage", ["empty", "cut10", "cut_half", "cut_end", "garbage", "flip"])
def test_damaged_files_raise_state_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "m.npz"
    tn.save(linear(0, n=50), path)
    good = path.read_bytes()
    bad = {
        "empty": b"",
        "cut10": good[:10],
        "cut_half": good[: len(good) // 2],
        "cut_end": good[:-7],
        "garbage": b"not an archive\n" * 20,
        "flip": good[:200] + bytes([good[200] ^ 0xFF]) + good[201:],
    }[damage]
    path.write_bytes(bad)
    with pytest.raises(tn.StateError) as info:
        tn.load_into(linear(1, n=50), path)
    message = str(info.value)
    assert str(path) in message and "allow_pickle" not in message, message


@pytest.mark.parametrize(
    "value, error, words",
    [
        (np.nan, tn.NumericError, "NaN/Inf"),
        (np.inf, tn.NumericError, "NaN/Inf"),
        (1 + 2j, tn.DTypeError, "complex128"),
        (3, tn.DTypeError, "int64"),
    ],
)
def test_non_finite_or_non_float_arrays_are_refused_on_load(tmp_path, value, error, words):
    weight = np.ones((2, 3), dtype=np.asarray(value).dtype)
    weight[1, 2] = value
    np.savez(tmp_path / "bad.npz", weight=weight, bias=np.zeros(2))
    m = linear(0)
    before = weights(m)
    with pytest.raises(error, match=words) as info:
        tn.load_into(m, tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value) and "'weight'" in str(info.value)
    assert same(weights(m), before)  # nothing half-loaded


def test_saving_nan_parameters_is_refused_and_keeps_the_previous_file(tmp_path):
    m = linear(0)
    tn.save(m, tmp_path / "m")
    good = (tmp_path / "m.npz").read_bytes()
    m.bias.data[1] = np.nan
    with pytest.raises(tn.NumericError, match="'bias'"):
        tn.save(m, tmp_path / "m")
    assert (tmp_path / "m.npz").read_bytes() == good
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind


def test_killed_at_every_durable_step_of_a_save_leaves_old_or_new(tmp_path):
    path = tmp_path / "m.npz"
    old, new = linear(0, n=40), linear(1, n=40)
    tn.save(old, path)
    outcomes = []
    for k in range(1, 20):

        def save_new(k=k):
            fileio.crash_after(k)
            tn.save(new, path)

        code = run_child(save_new)
        got = linear(2, n=40)
        tn.load_into(got, path)  # never damaged
        assert same(weights(got), weights(old)) or same(weights(got), weights(new)), k
        outcomes.append((code, same(weights(got), weights(new))))
        tn.save(old, path)
        if code == 0:
            break
    crashed = [o for o in outcomes if o[0] == fileio.CRASH_EXIT_CODE]
    assert outcomes[-1] == (0, True) and len(crashed) >= 3, outcomes
    assert crashed[0] == (fileio.CRASH_EXIT_CODE, False)  # died before the rename: old file
    assert crashed[-1] == (fileio.CRASH_EXIT_CODE, True)  # died after it: new file
    others = [p for p in os.listdir(tmp_path) if p != "m.npz"]
    assert all(p.startswith(".m.npz.") for p in others), others  # at most orphaned temp files


def test_sigkill_during_repeated_saves_never_leaves_a_damaged_file(tmp_path):
    path = tmp_path / "big.npz"
    models = [linear(s, n=20_000) for s in (0, 1)]  # 320 kB files: a kill often lands mid-write
    tn.save(models[0], path)
    rng = np.random.default_rng(0)
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            k = 0
            while True:
                tn.save(models[k % 2], path)
                k += 1
        time.sleep(float(rng.uniform(0.02, 0.1)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        got = linear(2, n=20_000)
        tn.load_into(got, path)
        assert any(same(weights(got), weights(m)) for m in models)
