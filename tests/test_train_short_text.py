"""A text too short to train on: the message counts the text the user gave."""

import pytest

from tapernn.apps.cli import main


@pytest.mark.parametrize(
    ("chars", "argv", "says"),
    [
        (
            3,
            [],
            (
                "has 3 characters; its training part (all but the last 1, held out for "
                "validation) has 2, too few for --batch 32 x --seq-len 32: need at least 1025"
            ),
        ),
        (
            100,
            ["--batch", "4", "--seq-len", "32"],
            (
                "has 100 characters; its training part (all but the last 5, held out for "
                "validation) has 95, too few for --batch 4 x --seq-len 32: need at least 129"
            ),
        ),
    ],
)
def test_a_short_text_names_its_own_length(chars, argv, says, tmp_path, capsys):
    """On 3fd1ba7 a 3-character file said "2 characters are too few" (it counted the
    training part without saying so)."""
    text = tmp_path / "short.txt"
    text.write_text("ab" * (chars // 2) + "c" * (chars % 2))
    assert main(["train", "--text", str(text), "--steps", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert says in err
    assert "use a longer text or a smaller --batch / --seq-len" in err


def test_a_text_just_long_enough_trains(tmp_path, capsys):
    text = tmp_path / "enough.txt"
    text.write_text("abcd" * 100)  # 380 to train on, 20 held out: 4 x 8 + 1 = 33 needed
    assert (
        main(
            [
                "train",
                "--text",
                str(text),
                "--batch",
                "4",
                "--seq-len",
                "8",
                "--steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
