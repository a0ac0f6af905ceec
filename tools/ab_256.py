"""A/B of branch h256's changes to the owned (32, 50, 256) training step (issue 19): "old" (this
branch with its changes switched off: PlanOptions(bias_in_gemm=False), step_loop's per-call
argument typing, packed.TRANSPOSED_PACK off: NumPy's strided copy packs W^T) against "new"
(the defaults), and torch nn.LSTM f32 -- one process, interleaved rounds with a rest before each
arm, wall and process CPU per step, medians; the gradients of old and new compared bit for bit.

Run: PYTHONPATH=$PWD python tools/ab_256.py --configs 32,50,256 32,50,512 --reps 15
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import nn
from tapernn.backends import packed, step_loop

_new_pick = step_loop.Halves.pick


def _old_pick(self, args0, args1):  # (step_loop.Halves.pick before h256: b typed every call)
    from tapernn.backends import background

    a, b = self.loops
    self.calls += 1
    if self.calls == 1:
        key = a.key(args0)
        if background.enabled():
            self.ready = background.request(a, key)
            return None
        a.prepare(key)
    elif self.ready is not None:
        self.ready.wait()
        self.ready = None
    if not a.has() or not b.prepare(b.key(args1)):
        self.error = a.error or b.error or "no kernel"
        return None
    return a, b


OLD = {"bias_in_gemm": False}
SWITCHES: list = [  # (module, attribute, old value, new value) flipped for the old arm
    (packed, "TRANSPOSED_PACK", [False], [True]),
]


def tn_step(B, T, H, dtype, x, g, mode, cell="FastLSTM"):
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(getattr(nn, cell)(H, H)).astype(dtype)
    if mode == "old":
        seq.set_plan_options(tn.PlanOptions(**OLD))

    def step():
        old = mode == "old"
        step_loop.Halves.pick = _old_pick if old else _new_pick
        for mod, attr, was, now in SWITCHES:
            setattr(mod, attr, was if old else now)
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    return step, seq


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ab_loop  # (its rounds, rests and table: only the arms' steps are this file's)

    ab_loop.main(tn_step)


if __name__ == "__main__":
    main()
