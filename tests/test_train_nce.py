"""`tapernn train --loss nce`: the character LM trained by noise-contrastive estimation learns,
reports the exact (full-softmax) validation perplexity, and resumes exactly."""

from __future__ import annotations

import numpy as np
from test_train import TINY, parse, word_text

from tapernn import nn
from tapernn.apps.trainer import Trainer


def test_nce_run_learns_and_reports_the_exact_perplexity(tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text(word_text(200), encoding="utf-8")
    trainer = Trainer(
        parse(
            "--text",
            str(text),
            "--steps",
            "80",
            "--lr",
            "0.02",
            "--loss",
            "nce",
            "--k",
            "25",
            "--sample-len",
            "20",
            *TINY,
        )
    )
    assert isinstance(trainer.lm.nce, nn.NCEModule) and trainer.lm.nce.k == 25
    assert trainer.fit() == 0
    losses = trainer.losses
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5
    ((step, ppl),) = trainer.validation
    assert step == 80 and ppl < trainer.unigram_ppl
    # the reported perplexity is the full softmax's, computed here from the log-probabilities
    lm = trainer.lm
    lm.model.evaluate()
    nll = []
    for x, y in zip(trainer.val_x, trainer.val_y):
        logp = lm.model.forward([x, y])
        np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-12)
        nll.append(-np.take_along_axis(logp, y[..., None], -1).mean())
    lm.model.training()
    assert ppl == np.exp(np.mean(nll)) or abs(ppl - np.exp(np.mean(nll))) < 1e-9 * ppl
    out = capsys.readouterr().out
    assert "validation perplexity" in out and "--- sample" in out


def test_nce_resume_equals_an_uninterrupted_run(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(word_text(7), encoding="utf-8")
    runs = {}
    for name, steps in (("a", 12), ("b", 6)):
        runs[name] = Trainer(
            parse(
                "--text",
                str(text),
                "--steps",
                str(steps),
                "--checkpoint",
                str(tmp_path / name),
                "--loss",
                "nce",
                "--k",
                "5",
                "--sample-len",
                "0",
                *TINY,
            )
        )
        assert runs[name].fit() == 0
    resumed = Trainer(
        parse(
            "--text",
            str(text),
            "--steps",
            "12",
            "--checkpoint",
            str(tmp_path / "b"),
            "--resume",
            "--no-progress",
        )
    )
    assert resumed.lm.nce is not None and resumed.fit() == 0
    assert resumed.losses == runs["a"].losses[6:]
    a, b = runs["a"].lm.model.state_dict(), resumed.lm.model.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
