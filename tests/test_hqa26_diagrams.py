"""QA round as a user (hqa26): in a collapsed op-level diagram (`tapernn graph --collapse`), a
recurrent edge folded back into its step template between two ops that a forward edge also joins
(a cell state c -> c * f -> c) was drawn straight on top of that forward edge, hiding it (the
PNG showed one line with arrowheads at both ends). It now leaves and enters from the top."""

import re

import numpy as np

import tapernn as tn
from tapernn import nn


class CellState(nn.Cell):
    state_names = ("h", "c")

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.parameter("w", (input_size + hidden_size, 2 * hidden_size))

    def step(self, x, h, c):
        z = tn.concat([x, h], axis=-1) @ self.w
        c2 = tn.sigmoid(z[..., : self.hidden_size]) * c + tn.tanh(z[..., self.hidden_size :])
        return tn.tanh(c2), c2


def edges(source: str) -> list[tuple[str, str, str]]:
    return re.findall(r"^\s*(\S+) -> (\S+)(?: \[(.*)\])?$", source, flags=re.MULTILINE)


def test_a_folded_recurrent_edge_does_not_lie_on_a_forward_edge():
    seq = nn.Sequencer(CellState(3, 4), unroll=True)
    seq.forward(np.random.default_rng(0).standard_normal((3, 2, 3)))
    found = edges(tn.to_dot(seq, level="op", collapse=True).source)
    folded = [(u, v, a) for u, v, a in found if "t+1" in a]
    assert len(folded) == 2  # h -> concat, c -> c * f
    forward = {(u, v) for u, v, a in found if "t+1" not in a}
    crossing = [(u, v, a) for u, v, a in folded if (v, u) in forward]
    assert len(crossing) == 1  # c2 = f * c + g: the forward edge c * f -> c2 and c2's loop back
    assert "tailport=n" in crossing[0][2] and "headport=n" in crossing[0][2]
    alone = [a for u, v, a in folded if (v, u) not in forward]
    assert all("tailport" not in a for a in alone)  # h's loop keeps dot's own route
