"""Sequence to sequence: an LSTM encoder hands its final (h, c) to an LSTM decoder that learns to
reverse digit sequences; the decoder's gradient w.r.t. its initial state flows back into the
encoder (set_initial_state / get_grad_initial_state / set_grad_hidden_state).

Run: python examples/seq2seq.py [--steps 1500]
"""

import argparse
import time

import numpy as np

import tapernn as tn
from tapernn import nn

DIGITS, GO, LENGTH = 10, 10, 5


def batch(rng, size):
    x = rng.integers(0, DIGITS, size=(LENGTH, size))  # time-major
    y = x[::-1]
    dec_in = np.concatenate([np.full((1, size), GO), y[:-1]])  # teacher forcing
    return x, dec_in, y


class Seq2Seq:
    def __init__(self, embed=32, hidden=128):
        self.enc_cell, self.dec_cell = nn.LSTM(embed, hidden), nn.LSTM(embed, hidden)
        self.encoder = nn.Sequential(nn.LookupTable(DIGITS + 1, embed), nn.Sequencer(self.enc_cell))
        self.decoder = nn.Sequential(
            nn.LookupTable(DIGITS + 1, embed),
            nn.Sequencer(self.dec_cell),
            nn.Sequencer(nn.Linear(hidden, DIGITS)),
        )
        self.criterion = nn.SequencerCriterion(nn.CrossEntropyCriterion(), size_average=True)
        self.params = self.encoder.parameters() + self.decoder.parameters()

    def train_step(self, x, dec_in, y):
        self.encoder.forward(x)
        self.dec_cell.set_initial_state(self.enc_cell.get_hidden_state(-1))
        logits = self.decoder.forward(dec_in)
        loss = self.criterion.forward(logits, y)
        for m in (self.encoder, self.decoder):
            m.zero_grad_parameters()
        self.decoder.backward(dec_in, self.criterion.backward(logits, y))
        # the gradient that reached the decoder's initial state continues into the encoder
        self.enc_cell.set_grad_hidden_state(-1, self.dec_cell.get_grad_initial_state())
        self.encoder.backward(x, np.zeros(self.encoder.output.shape))
        return loss

    def greedy(self, x):
        self.encoder.evaluate()
        self.decoder.evaluate()
        seq = self.decoder.get(1).remember("eval")
        self.encoder.forward(x)
        self.dec_cell.set_initial_state(self.enc_cell.get_hidden_state(-1))
        token = np.full((1, x.shape[1]), GO)
        out = []
        for _ in range(LENGTH):
            token = self.decoder.forward(token)[0].argmax(-1)[None]
            out.append(token[0])
        seq.forget()
        seq.remember("neither")
        self.encoder.training()
        self.decoder.training()
        return np.stack(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    tn.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Seq2Seq()
    opt = tn.optim.Adam(model.params, lr=3e-3)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model.train_step(*batch(rng, args.batch))
        tn.optim.clip_grad_norm(model.params, 5.0)
        opt.step()
        if step % 250 == 0:
            x, _, y = batch(np.random.default_rng(1), 1000)
            acc = np.mean(np.all(model.greedy(x) == y, axis=0))
            print(
                f"step {step:5d}  loss {loss:.4f}  exact-sequence accuracy {acc:.3f}  "
                f"({time.perf_counter() - start:.0f} s)"
            )
    x, _, y = batch(np.random.default_rng(2), 2000)
    acc = float(np.mean(np.all(model.greedy(x) == y, axis=0)))
    print(f"final exact-sequence accuracy on 2000 held-out sequences: {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
