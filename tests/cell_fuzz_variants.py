"""The random cells of tests/cell_fuzz.py under the ways users drive them (tools/fuzz_variants.py,
tests/test_cell_fuzz_variants.py): rolled and unroll=True, a right-padded batch with lengths=,
remembered chunks, need_grad_input=False, BiSequencer, Repeater, Recursor stepped by hand.

Every variant's outputs are checked against a NumPy evaluation of the same random program (it
shares nothing with tapernn), and its gradients along a random direction against central
differences of that evaluation (float64 cells without kinks); float32 cases must keep float32
in every output and gradient and agree with the float64 run of the same variant.
"""

from __future__ import annotations

import numpy as np
from cell_fuzz import KINKS, Case, make_case, make_cell

from tapernn import nn

VARIANTS = (
    "unroll",
    "no_grad_input",
    "lengths",
    "chunks",
    "bi",
    "repeater",
    "recursor",
    "mask_zero",
    "lengths_chunks",
)


def np_run(
    case: Case, params: list, x: np.ndarray, init: list | None = None, mask_zero: bool = False
):
    """Outputs (T, *batch, H) and the final states of every cell, from `init` (zeros if None);
    `mask_zero`: rows whose input to a cell is all zeros output zeros and reset its state."""
    batch = x.shape[1:-1]
    states = (
        [[np.zeros(batch + (c.H,)) for _ in range(c.states)] for c in case.cells]
        if init is None
        else [list(s) for s in init]
    )
    outs = []
    for t in range(x.shape[0]):
        h = x[t]
        for k, cell in enumerate(case.cells):
            new = list(cell.run(1, [h, *states[k]], params[k]))
            if mask_zero:
                zero = np.all(h == 0, axis=-1, keepdims=True)
                new = [np.where(zero, 0.0, v) for v in new]
            states[k] = new
            h = states[k][cell.output]
        outs.append(h)
    return np.stack(outs), states


def couples_rows(case: Case) -> bool:
    """A 0-d reduction over a batched value mixes the rows: lengths= means nothing there."""
    return any(op in ("rsum", "rmax", "rmean") for c in case.cells for op, _, _ in c.code)


def applies(case: Case, variant: str) -> bool:
    """Whether `variant` runs on `case` (run_variant returns None where it does not)."""
    batched = len(case.batch) == 1 and case.batch[0] >= 2 and not couples_rows(case)
    return {
        "lengths": batched,
        "lengths_chunks": batched and case.T >= 2,
        "chunks": case.T >= 2,
        "bi": len(case.cells) == 1,
        "mask_zero": bool(case.batch) and not couples_rows(case),
    }.get(variant, True)


def _module(cells: list) -> nn.Module:
    return cells[0] if len(cells) == 1 else nn.Sequential(*cells)


def _cells(case: Case, params: list | None = None) -> list:
    params = case.params if params is None else params
    return [make_cell(s, p, f"FuzzCell{k}") for k, (s, p) in enumerate(zip(case.cells, params))]


def _grads(cells: list, case: Case) -> list:
    return [{k: np.array(getattr(c, k).grad) for k in s.params} for c, s in zip(cells, case.cells)]


def _prep(m: nn.Module, dtype) -> nn.Module:
    if dtype == np.float32:
        m.float()
    return m


class Run:
    """What a variant returns: outputs, the oracle's outputs, input gradient (None if not asked)
    and parameter gradients, plus a function of (params, x) whose directional derivative the
    gradients must match (None: no FD check for this variant)."""

    def __init__(self, y, want, dx, grads, loss=None):
        self.y, self.want, self.dx, self.grads, self.loss = y, want, dx, grads, loss


def run_variant(case: Case, variant: str, dtype, rng: np.random.Generator) -> Run | None:
    x64, seed = case.x, case.seed_grad
    x = x64.astype(dtype)
    T = case.T
    if variant in ("unroll", "no_grad_input"):
        cells = _cells(case)
        m = _prep(nn.Sequencer(_module(cells), unroll=variant == "unroll" or None), dtype)
        y = np.array(m.forward(x))
        m.zero_grad_parameters()
        dx = m.backward(x, seed.astype(dtype), need_grad_input=variant != "no_grad_input")
        if variant == "no_grad_input":
            assert dx is None, f"need_grad_input=False returned {type(dx)}"
        else:
            dx = np.array(dx)
        want = np_run(case, case.params, x64)[0]

        def loss(p, xx):
            return float(np.sum(seed * np_run(case, p, xx)[0]))

        return Run(y, want, dx, _grads(cells, case), loss)
    if variant == "lengths":
        if len(case.batch) != 1 or case.batch[0] < 2 or couples_rows(case):
            return None
        B = case.batch[0]
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T
        cells = _cells(case)
        m = _prep(nn.Sequencer(_module(cells), unroll=bool(rng.random() < 0.5) or None), dtype)
        y = np.array(m.forward(x, lengths=lengths))
        m.zero_grad_parameters()
        dx = np.array(m.backward(x, seed.astype(dtype)))

        def alone(p, xx):
            out = np.zeros(xx.shape[:2] + (case.cells[-1].H,))
            for b, n in enumerate(lengths):
                out[:n, b : b + 1] = np_run(case, p, xx[:n, b : b + 1])[0]
            return out

        return Run(
            y,
            alone(case.params, x64),
            dx,
            _grads(cells, case),
            lambda p, xx: float(np.sum(seed * alone(p, xx))),
        )
    if variant == "chunks":
        if T < 2:
            return None
        k = int(rng.integers(1, T))
        cells = _cells(case)
        m = _prep(nn.Sequencer(_module(cells), unroll=bool(rng.random() < 0.5) or None), dtype)
        m.remember("both")
        y1 = np.array(m.forward(x[:k]))
        m.zero_grad_parameters()
        m.backward(x[:k], seed[:k].astype(dtype))
        y2 = np.array(m.forward(x[k:]))
        m.zero_grad_parameters()
        dx2 = np.array(m.backward(x[k:], seed[k:].astype(dtype)))
        _, mid = np_run(case, case.params, x64[:k])
        want = np_run(case, case.params, x64)[0]

        def loss(p, xx):  # chunk 2 from chunk 1's (unperturbed) final states: truncated BPTT
            return float(np.sum(seed[k:] * np_run(case, p, xx[k:], mid)[0]))

        return Run(np.concatenate([y1, y2]), want, dx2, _grads(cells, case), (loss, k))
    if variant == "mask_zero":
        if not case.batch or couples_rows(case):
            return None
        xz = x64.copy()
        xz[rng.random(xz.shape[:-1]) < 0.3] = 0.0
        x = xz.astype(dtype)
        cells = [c.mask_zero() for c in _cells(case)]
        m = _prep(nn.Sequencer(_module(cells), unroll=bool(rng.random() < 0.5) or None), dtype)
        y = np.array(m.forward(x))
        m.zero_grad_parameters()
        dx = np.array(m.backward(x, seed.astype(dtype)))
        zero = np.all(xz == 0, axis=-1, keepdims=True)

        def loss(p, xx):  # (the zero rows stay zero: the perturbation keeps the mask)
            return float(np.sum(seed * np_run(case, p, np.where(zero, 0.0, xx), None, True)[0]))

        return Run(
            y,
            np_run(case, case.params, xz, None, True)[0],
            dx,
            _grads(cells, case),
            ("masked", loss, zero),
        )
    if variant == "lengths_chunks":
        if len(case.batch) != 1 or case.batch[0] < 2 or couples_rows(case) or T < 2:
            return None
        B, k = case.batch[0], int(rng.integers(1, T))
        l1, l2 = rng.integers(1, k + 1, size=B), rng.integers(1, T - k + 1, size=B)
        cells = _cells(case)
        m = _prep(nn.Sequencer(_module(cells), unroll=bool(rng.random() < 0.5) or None), dtype)
        m.remember("both")
        y1 = np.array(m.forward(x[:k], lengths=l1))
        m.zero_grad_parameters()
        m.backward(x[:k], seed[:k].astype(dtype))
        y2 = np.array(m.forward(x[k:], lengths=l2))
        m.zero_grad_parameters()
        dx2 = np.array(m.backward(x[k:], seed[k:].astype(dtype)))
        mids = [np_run(case, case.params, x64[: l1[b], b : b + 1])[1] for b in range(B)]

        def second(p, xx):  # chunk 2 alone per row, from the row's state at its length
            out = np.zeros((T - k, B, case.cells[-1].H))
            for b in range(B):
                out[: l2[b], b : b + 1] = np_run(case, p, xx[k : k + l2[b], b : b + 1], mids[b])[0]
            return out

        want = np.zeros((T, B, case.cells[-1].H))
        for b in range(B):
            want[: l1[b], b : b + 1] = np_run(case, case.params, x64[: l1[b], b : b + 1])[0]
        want[k:] = second(case.params, x64)
        return Run(
            np.concatenate([y1, y2]),
            want,
            dx2,
            _grads(cells, case),
            (lambda p, xx: float(np.sum(seed[k:] * second(p, xx))), k),
        )
    if variant == "bi":
        if len(case.cells) != 1:
            return None
        p2 = [{n: v[::-1].copy() * 0.9 for n, v in case.params[0].items()}]
        fwd, bwd = _cells(case)[0], _cells(case, p2)[0]
        m = _prep(nn.BiSequencer(fwd, bwd), dtype)
        if rng.random() < 0.5:
            m.unroll = True
        y = np.array(m.forward(x))
        H = case.cells[0].H
        s2 = np.concatenate([seed, seed[::-1] * 0.5], axis=-1)
        m.zero_grad_parameters()
        dx = np.array(m.backward(x, s2.astype(dtype)))

        def bi(p, q, xx):
            return np.concatenate(
                [np_run(case, p, xx)[0], np_run(case, q, xx[::-1])[0][::-1]], axis=-1
            )

        grads = _grads([fwd], case) + _grads([bwd], case)
        assert y.shape[-1] == 2 * H
        return Run(
            y,
            bi(case.params, p2, x64),
            dx,
            grads,
            ("bi", lambda ps, xx: float(np.sum(s2 * bi(ps[:1], ps[1:], xx))), p2),
        )
    if variant == "repeater":
        n = T
        cells = _cells(case)
        m = _prep(nn.Repeater(_module(cells), n), dtype)
        if rng.random() < 0.5:
            m.unroll = True
        x0 = x[0]
        y = np.array(m.forward(x0))
        m.zero_grad_parameters()
        dx = np.array(m.backward(x0, [s.astype(dtype) for s in seed]))

        def rep(p, xx):
            return np_run(case, p, np.stack([xx[0]] * n))[0]

        return Run(y, rep(case.params, x64), dx, _grads(cells, case), ("rep", rep))
    if variant == "recursor":
        cells = _cells(case)
        m = _prep(nn.Recursor(_module(cells)), dtype)
        ys = [np.array(m.forward(x[t])) for t in range(T)]
        m.zero_grad_parameters()
        dxs = [None] * T
        for t in reversed(range(T)):
            dxs[t] = np.array(m.backward(x[t], seed[t].astype(dtype)))

        def loss(p, xx):
            return float(np.sum(seed * np_run(case, p, xx)[0]))

        return Run(
            np.stack(ys),
            np_run(case, case.params, x64)[0],
            np.stack(dxs),
            _grads(cells, case),
            loss,
        )
    raise ValueError(variant)


def _close(a, b, rtol, what):
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=what)


def _fd(case: Case, r: Run, rng: np.random.Generator, what: str) -> None:
    x = case.x
    loss, params = r.loss, case.params
    kind, k = None, 0
    if isinstance(loss, tuple) and loss[0] == "bi":
        kind, fn, p2 = loss
        params = case.params + p2
        loss = fn
    elif isinstance(loss, tuple) and loss[0] == "masked":
        kind, loss, zero = loss
    elif isinstance(loss, tuple) and loss[0] == "rep":
        kind, fn = loss
        n = case.T

        def loss(p, xx):
            return float(np.sum(case.seed_grad[:n] * fn(p, xx)))
    elif isinstance(loss, tuple):
        loss, k = loss
        kind = "chunks"
    vx = rng.standard_normal(x.shape)
    if kind == "rep":
        vx[1:] = 0.0
    if kind == "chunks":
        vx[:k] = 0.0
    if kind == "masked":
        vx = np.where(zero, 0.0, vx)
    if r.dx is None:  # (need_grad_input=False: the parameters' gradients only)
        vx[:] = 0.0
    vp = [{n: rng.standard_normal(v.shape) for n, v in p.items()} for p in params]

    def at(e):
        ps = [{n: p[n] + e * v[n] for n in p} for p, v in zip(params, vp)]
        return loss(ps, x + e * vx)

    h = 1e-6
    numeric = (at(h) - at(-h)) / (2 * h)
    analytic = sum(float(np.sum(g[n] * v[n])) for g, v in zip(r.grads, vp) for n in v)
    if r.dx is not None:
        dx = r.dx
        if kind == "rep":
            analytic += float(np.sum(dx * vx[0]))
        elif kind == "chunks":
            analytic += float(np.sum(dx * vx[k:]))
        else:
            analytic += float(np.sum(dx * vx))
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (what, analytic, numeric)


def check_variant(case: Case, variant: str) -> bool:
    """Runs one variant of `case` (float64, and float32 against it); False if it does not
    apply to the case."""
    rng = np.random.default_rng(case.seed * 7 + VARIANTS.index(variant))
    dtype = case.dtype
    sub = int(rng.integers(1 << 30))  # (the same lengths / chunk split for both dtypes)
    r = run_variant(case, variant, np.float64, np.random.default_rng(sub))
    if r is None:
        return False
    what = f"seed {case.seed} {variant}"
    assert r.y.shape == r.want.shape, (what, r.y.shape, r.want.shape)
    _close(r.y, r.want, 1e-9, f"{what}: outputs vs NumPy")
    kinks = any(op in KINKS for c in case.cells for op, _, _ in c.code)
    if not kinks:
        _fd(case, r, rng, what)
    if dtype == np.float32:
        r32 = run_variant(case, variant, np.float32, np.random.default_rng(sub))
        for name, a, b in [("y", r32.y, r.y), ("dx", r32.dx, r.dx)] + [
            (f"grad {n}", g32[n], g[n]) for g32, g in zip(r32.grads, r.grads) for n in g
        ]:
            if b is None:
                continue
            assert a.dtype == np.float32, (what, name, a.dtype)
            _close(a, b, 3e-3, f"{what} float32 {name}")
    return True


__all__ = ["VARIANTS", "applies", "check_variant", "make_case"]
