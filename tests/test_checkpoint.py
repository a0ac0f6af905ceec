"""Training checkpoints written whole or not at all: a save killed after each of its durable
steps resumes from the previous or the new checkpoint (never a mix) and ends where an
uninterrupted run ends; a checkpoint whose parts disagree is refused naming the file; old-format
checkpoints load; `tapernn train` refuses to overwrite another run and says when there is
nothing to do."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest

from tapernn import fileio
from tapernn.apps.checkpoint import CheckpointError, load_checkpoint
from tapernn.apps.cli import OneLineArgumentParser
from tapernn.apps.train import add_arguments, main
from tapernn.apps.trainer import Trainer

TINY = [
    "--hidden",
    "8",
    "--embed",
    "4",
    "--batch",
    "2",
    "--seq-len",
    "6",
    "--no-progress",
    "--sample-len",
    "0",
    "--cell",
    "gru",
]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
    rnd = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("\n".join(" ".join(rnd.choice(words) for _ in range(8)) for _ in range(60)))
    return path


def trainer(text, ckpt, steps: int, *extra: str) -> Trainer:
    parser = OneLineArgumentParser(prog="tapernn train")
    add_arguments(parser)
    return Trainer(
        parser.parse_args(
            ["--text", str(text), "--steps", str(steps), "--checkpoint", str(ckpt), *extra, *TINY]
        )
    )


def run(text, ckpt, steps: int, *extra: str) -> Trainer:
    t = trainer(text, ckpt, steps, *extra)
    assert t.fit() == 0
    return t


def weights(t: Trainer) -> dict:
    return t.lm.model.state_dict()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def fork_save(t: Trainer, ckpt, k: int) -> int:
    """Save `t` into `ckpt` in a forked child that dies after its k-th durable file operation."""
    pid = os.fork()
    if pid == 0:
        try:
            t.args.checkpoint = str(ckpt)
            fileio.crash_after(k)
            t._save()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def contents(ckpt) -> tuple:
    c = load_checkpoint(ckpt)
    config = {k: v for k, v in c.config.items() if k != "last_loss"}  # informational only
    return config, c.model, c.optimizer, c.states


def same_contents(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(same(x, y) for x, y in zip(a[1:], b[1:]))


def test_a_save_killed_at_any_point_resumes_old_or_new_never_a_mix(tmp_path, text):
    straight = run(text, tmp_path / "straight", 6)
    run(text, tmp_path / "good2", 2)
    shutil.copytree(tmp_path / "good2", tmp_path / "a")
    run(text, tmp_path / "a", 4, "--resume")
    at4 = trainer(text, tmp_path / "a", 4, "--resume")  # holds exactly the step-4 checkpoint
    expected = {2: contents(tmp_path / "good2"), 4: contents(tmp_path / "a")}
    seen = []
    for k in range(1, 40):
        ckpt = tmp_path / f"k{k}"
        shutil.copytree(tmp_path / "good2", ckpt)
        code = fork_save(at4, ckpt, k)
        got = contents(ckpt)  # verified against its manifest, or an error
        step = got[0]["step"]
        assert step in expected and same_contents(got, expected[step]), (k, step)
        seen.append((code, step))
        if code == 0:
            break
    crashed = [step for code, step in seen if code == fileio.CRASH_EXIT_CODE]
    assert seen[-1] == (0, 4) and len(crashed) >= 10, seen
    assert crashed[0] == 2 and crashed[-1] == 4 and crashed == sorted(crashed), seen
    # what each kind of outcome resumes to: the uninterrupted run's weights
    for k in (1, crashed.index(4) + 1, len(seen)):
        resumed = trainer(text, tmp_path / f"k{k}", 6, "--resume")
        assert resumed.fit() == 0 and same(weights(resumed), weights(straight)), k


def test_a_checkpoint_whose_parts_disagree_is_refused_naming_the_file(tmp_path, text, capsys):
    run(text, tmp_path / "a", 2)
    run(text, tmp_path / "b", 3)
    gen_a = tmp_path / "a" / (tmp_path / "a" / "CURRENT").read_text().strip()
    gen_b = tmp_path / "b" / (tmp_path / "b" / "CURRENT").read_text().strip()
    shutil.copy(gen_b / "optimizer.npz", gen_a / "optimizer.npz")  # the torn mix of the issue
    assert main(["--text", str(text), "--resume", "--checkpoint", str(tmp_path / "a"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optimizer.npz" in err and "manifest" in err, err
    config = json.loads((gen_b / "config.json").read_text())
    config["step"] = 17
    (gen_b / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "b")


def test_a_legacy_checkpoint_loads_and_the_next_save_converts_it(tmp_path, text, capsys):
    new = tmp_path / "new"
    run(text, new, 3)
    gen = new / (new / "CURRENT").read_text().strip()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("model.npz", "optimizer.npz", "states.npz"):
        shutil.copy(gen / name, legacy / name)
    config = json.loads((gen / "config.json").read_text())
    (legacy / "config.json").write_text(
        json.dumps(dict(config, format="tapernn-train-checkpoint-1"))
    )
    resumed = trainer(text, legacy, 5, "--resume")
    assert resumed.step == 3 and "older tapernn" in capsys.readouterr().err
    assert same(weights(resumed), weights(trainer(text, new, 3, "--resume")))
    assert resumed.fit() == 0
    assert sorted(p.name for p in legacy.iterdir()) == ["CURRENT", "gen-00000001"]
    assert load_checkpoint(legacy).step == 5


def test_train_refuses_to_overwrite_another_runs_checkpoint(tmp_path, text, capsys):
    ckpt = tmp_path / "c"
    run(text, ckpt, 3)
    before = load_checkpoint(ckpt).model
    assert main(["--text", str(text), "--steps", "2", "--checkpoint", str(ckpt), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds" in err and "step 3" in err, err
    assert "--resume" in err and "--force" in err
    assert same(load_checkpoint(ckpt).model, before)
    assert (
        main(["--text", str(text), "--steps", "2", "--checkpoint", str(ckpt), "--force", *TINY])
        == 0
    )
    assert load_checkpoint(ckpt).step == 2


def test_resume_past_the_requested_steps_says_nothing_to_do(tmp_path, text, capsys):
    ckpt = tmp_path / "c"
    run(text, ckpt, 3)
    pointer = (ckpt / "CURRENT").read_text()
    capsys.readouterr()
    assert (
        main(
            [
                "--resume",
                "--checkpoint",
                str(ckpt),
                "--steps",
                "2",
                "--no-progress",
                "--sample-len",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "nothing to do" in out and "step 3" in out, out
    assert (ckpt / "CURRENT").read_text() == pointer  # not saved again


def test_a_broken_pointer_or_manifest_is_refused_naming_the_file(tmp_path, text):
    ckpt = tmp_path / "c"
    run(text, ckpt, 2)
    gen = ckpt / (ckpt / "CURRENT").read_text().strip()
    (gen / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_checkpoint(ckpt)
    shutil.rmtree(gen)
    with pytest.raises(CheckpointError, match="CURRENT"):
        load_checkpoint(ckpt)
    (ckpt / "CURRENT").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        load_checkpoint(ckpt)


def test_force_into_a_directory_with_foreign_files_keeps_them(tmp_path, text):
    ckpt = tmp_path / "c"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"mine": true}')  # not a tapernn checkpoint
    assert main(["--text", str(text), "--steps", "2", "--checkpoint", str(ckpt), *TINY]) == 2
    assert (
        main(["--text", str(text), "--steps", "2", "--checkpoint", str(ckpt), "--force", *TINY])
        == 0
    )
    assert (ckpt / "config.json").read_text() == '{"mine": true}'
    assert load_checkpoint(ckpt).step == 2
