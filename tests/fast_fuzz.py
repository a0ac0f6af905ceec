"""Random differential fuzzing of the FAST paths (issue 19) at the shapes that engage them:
numba backend, H in {128, 256, 260} (packed step GEMMs: weights >= 65,536 elements), B in
{16, 17, 32, 33} (the batch split over two threads, odd B: 9|8 halves), owned threads, the step
loops, bias in the owned GEMM halves, keep.py's reuse of large per-call arrays, panels lent in
the weights' zeroed .grad, feature- or batch-major, need_grad_input=False, remember/forget,
lengths=, masking (`cell.mask_zero()` or `nn.MaskZero(cell, 1)` on any layer of the stack, zero
input rows placed at random: scattered, a row zero at every step, left padding, the last step,
every row of a step, none), and several calls per model with the weights changed between them
(background switches, the steady path).

Oracles that share nothing with the code under test's passes, lowering or loops:
- built-in cells (FastLSTM, LSTM with or without peepholes, GRU incl. reset_after, RNN, two
  stacked with Dropout(0) between): tests/cell_reference.py's NumPy equations (values), complex
  steps of them along random directions (every gradient: all together and each alone);
- random custom cells (tests/cell_fuzz.py's generator at large H): the program evaluated with
  NumPy (values) and its unrolled trace differentiated and run by the reference interpreter
  (tapernn.interpret: every gradient, whole).
Results a caller held from earlier calls (outputs, input gradients) must stay unchanged.
Used by tools/fuzz_fast.py (thousands of cases) and tests/test_fast_fuzz.py (a few).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
from cell_fuzz import KINKS, CellSpec, _Gen, make_cell
from cell_reference import fastlstm_step, gru_step, lstm_step, rnn_step
from fast_fuzz_mask import draw_masking, masked

import tapernn as tn
from tapernn import nn
from tapernn.interpret import interpret

BUILTIN = {
    "FastLSTM": (lambda D, H: nn.FastLSTM(D, H), fastlstm_step, 2),
    "LSTM": (lambda D, H: nn.LSTM(D, H), lstm_step, 2),
    "LSTM_nopeep": (
        lambda D, H: nn.LSTM(D, H, peephole=False),
        functools.partial(lstm_step, peephole=False),
        2,
    ),
    "GRU": (lambda D, H: nn.GRU(D, H), gru_step, 1),
    "GRU_reset_after": (
        lambda D, H: nn.GRU(D, H, reset_after=True),
        functools.partial(gru_step, reset_after=True),
        1,
    ),
    "RNN": (lambda D, H: nn.RNN(D, H), rnn_step, 1),
}
OPTION_CHOICES = {
    "layout": ["batch", "batch", "feature", "auto"],
    "batch_split": ["auto", "on", "on", "off"],
    "own_threads": ["auto", "on", "on", "off"],
    "step_loops": [True, True, False],
    "bias_in_gemm": [True, True, False],
    "packed_gemm": [True, True, True, False],
    "xs_in_slab": [True, True, False],
    "dz_in_gates": [True, True, False],
}


@dataclass
class Layer:
    kind: str  # a BUILTIN name or "custom"
    D: int
    H: int
    spec: CellSpec | None = None
    init: dict | None = None  # custom cells: parameter values

    @property
    def n_states(self) -> int:
        return BUILTIN[self.kind][2] if self.spec is None else self.spec.states

    @property
    def out_state(self) -> int:
        return 0 if self.spec is None else self.spec.output

    def np_step(self, p, x, *s):
        if self.spec is None:
            return BUILTIN[self.kind][1](p, x, *s)
        return self.spec.run(1, [x, *s], p)


@dataclass
class Call:
    T: int
    lengths: list | None
    need_grad_input: bool
    zero_grad: bool
    forget: bool  # forget() before this call (remembered models)
    bump: float  # weights changed by this much before the call (0: unchanged)
    zeros: list | None = None  # [(t, b)]: input rows set to zero (masked cases)


@dataclass
class FastCase:
    seed: int
    layers: list
    B: int
    dtype: type
    options: dict
    remember: bool
    calls: list = field(default_factory=list)
    # per layer: None, "cell" (cell.mask_zero(): a row whose input is all zeros outputs zeros
    # and resets its state) or "module" (nn.MaskZero(cell, 1): its outputs only are zeroed)
    masking: list | None = None

    def describe(self) -> str:
        head = [
            (
                f"# fast-fuzz seed {self.seed}: B={self.B} dtype={np.dtype(self.dtype).name} "
                f"remember={self.remember}"
            ),
            f"# PlanOptions(backend='numba', **{self.options!r})",
            "# layers: " + ", ".join(f"{lay.kind}({lay.D}, {lay.H})" for lay in self.layers),
        ]
        if self.masking:
            head.append(f"# masking (per layer): {self.masking}")
        head += [f"# call {k}: {c}" for k, c in enumerate(self.calls)]
        cells = [lay.spec.source(f"FuzzCell{k}") for k, lay in enumerate(self.layers) if lay.spec]
        return "\n\n".join(["\n".join(head)] + cells)


def _custom_spec(rng, D: int, H: int) -> tuple[CellSpec, dict]:
    """A random cell of tests/cell_fuzz.py at width H, always with one gate block (a recurrent
    GEMM over a (H, k H) weight: packed at H >= 128, k >= 2)."""
    gen = _Gen(rng, D, H, int(rng.integers(1, 3)))
    gen.gate_block()
    for _ in range(int(rng.integers(0, 6))):
        gen.step()
    spec = gen.finish()
    scale = {k: 0.6 / np.sqrt(max(1, s[0] if len(s) == 2 else 1)) for k, s in spec.params.items()}
    init = {k: rng.standard_normal(s) * scale[k] for k, s in spec.params.items()}
    return spec, init


# make_fast_case's sizes; "wide", "small" (tools/fuzz_fast.py --sizes, hfuzz): widths short of and
# past the vectors and panels of AVX2 and AVX-512, every remainder of the microkernels' 4 / 8 row
# blocks; "small": the whole-program kernels' sizes (no packed GEMM), each vector remainder
SIZES = {"suite": {"D": [3, 16, 130], "H": [128, 256, 260], "H2": [128, 130]}}
SIZES["suite"]["B"] = [16, 17, 32, 33]
SIZES["wide"] = {"D": [1, 3, 5, 17, 130], "H": [127, 129, 131, 255, 257, 260, 513]}
SIZES["wide"] |= {"H2": [129, 131], "B": [1, 2, 3, 5, 7, 9, 17, 33]}
SIZES["small"] = {"D": [1, 3, 5], "H": [1, 3, 5, 7, 9, 17, 33], "H2": [3, 9], "B": [1, 3, 5, 9]}


def make_fast_case(
    seed: int, max_calls: int = 5, mask_lengths: bool = False, sizes: str = "suite"
) -> FastCase:
    """The case of `seed`; `mask_lengths`: cases with lengths= are masked too (their other
    draws unchanged: the masking is drawn last); `sizes`: a key of SIZES."""
    rng = np.random.default_rng(seed)
    sizes = SIZES[sizes]
    custom = rng.random() < 0.35
    D = int(rng.choice(sizes["D"]))
    n_layers = 2 if rng.random() < 0.25 else 1
    layers = []
    for _ in range(n_layers):
        H = int(rng.choice(sizes["H"] if n_layers == 1 else sizes["H2"]))
        if custom:
            spec, init = _custom_spec(rng, D, H)
            layers.append(Layer("custom", D, H, spec, init))
        else:
            layers.append(Layer(str(rng.choice(list(BUILTIN))), D, H))
        D = H
    B = int(rng.choice(sizes["B"]))
    dtype = np.float32 if rng.random() < 0.3 else np.float64
    options = {k: v[int(rng.integers(len(v)))] for k, v in OPTION_CHOICES.items()}
    for k in list(options):  # the defaults mostly: the paths as users meet them
        if rng.random() < 0.3:
            del options[k]
    remember = rng.random() < 0.3
    rows_mix = any(
        op in ("rsum", "rmax", "rmean") for lay in layers if lay.spec for op, _, _ in lay.spec.code
    )
    case = FastCase(seed, layers, B, dtype, options, remember)
    # calls mostly repeat one signature (a program's split, step loops and steady path run
    # from its second call on); now and then another length, lengths= or need_grad_input
    T = int(rng.integers(3, 7))
    use_lengths = not rows_mix and rng.random() < 0.3
    ngi = bool(rng.random() < 0.7)
    for k in range(int(rng.integers(3, max_calls + 1))):
        if rng.random() < 0.15:
            T = int(rng.integers(3, 7))
        if rng.random() < 0.15:
            ngi = not ngi
        lengths = None
        if use_lengths != (rng.random() < 0.15) and not rows_mix:
            lengths = [int(v) for v in rng.integers(1, T + 1, B)]
            lengths[int(rng.integers(B))] = T
        case.calls.append(
            Call(
                T,
                lengths,
                ngi,
                bool(k == 0 or rng.random() < 0.6),
                bool(remember and k and rng.random() < 0.3),
                float(rng.choice([0.0, 0.01, 0.05])) if k else 0.0,
            )
        )
    draw_masking(rng, case, mask_lengths)  # after every draw above: old seeds' cases unchanged
    return case


def build(case: FastCase):
    """(Sequencer, cells): the case's model on the numba backend with its PlanOptions."""
    tn.manual_seed(case.seed)
    cells = []
    for k, lay in enumerate(case.layers):
        if lay.spec is None:
            cells.append(BUILTIN[lay.kind][0](lay.D, lay.H))
        else:
            cells.append(make_cell(lay.spec, lay.init, f"FuzzCell{k}"))
    mods = masked(cells, case.masking)
    if len(mods) == 1:
        inner = mods[0]
    else:
        inner = nn.Sequential(mods[0], nn.Dropout(0.0), *mods[1:])
    m = nn.Sequencer(inner)
    if case.dtype == np.float32:
        m.float()
    m.set_plan_options(tn.PlanOptions(**{"backend": "numba", **case.options}))
    if case.remember:
        m.remember("both")
    return m, cells


# ---------------------------------------------------------------- the oracles


def np_forward(case: FastCase, params: list, x, mask, init: list, keeps: list | None = None):
    """Outputs (T, B, H) and final states of the stack, masked as lengths= masks: a row past
    its length keeps its state and outputs zeros; and as case.masking says: a layer's row
    whose input's real part is all zeros outputs zeros ("cell": its new state is zeros too).
    Runs on complex arrays (built-in cells). `keeps` gets each step's layers' (B, 1) 0/1
    columns (1: not a zero row)."""
    states = [list(s) for s in init]
    masking = case.masking or [None] * len(case.layers)
    outs = []
    for t in range(x.shape[0]):
        h = x[t]
        k = 1.0 if mask is None else mask[t]
        for j, lay in enumerate(case.layers):
            new = lay.np_step(params[j], h, *states[j])
            keep = np.any(np.real(h) != 0, axis=-1)[:, None].astype(float)
            if keeps is not None:
                keeps.append(keep if masking[j] else np.ones_like(keep))
            if masking[j] == "cell":
                new = [keep * n for n in new]
            out = keep * new[lay.out_state] if masking[j] else new[lay.out_state]
            states[j] = [k * n + (1 - k) * s for n, s in zip(new, states[j])]
            h = k * out
        outs.append(h)
    return np.stack(outs), states


class _Complex(np.ndarray):
    """A complex array whose matmul is four real GEMMs (OpenBLAS's zgemm ran 0.07 s for a
    (33, 128) @ (128, 128) here under load: the complex steps took most of a case's time)."""

    def __matmul__(self, other):
        return _cmatmul(self, other)

    def __rmatmul__(self, other):
        return _cmatmul(other, self)


def _parts(a):
    a = np.asarray(a)
    return np.ascontiguousarray(a.real), np.ascontiguousarray(a.imag)


def _cmatmul(a, b):
    (ar, ai), (br, bi) = _parts(a), _parts(b)
    real = ar @ br - ai @ bi
    out = np.empty(real.shape, complex)
    out.real, out.imag = real, ar @ bi + ai @ br
    return out.view(_Complex)


def _directional(case, params, x, mask, init, seed, directions):
    h = 1e-30
    moved = [
        {n: (v + 1j * h * directions[j].get(n, 0)).view(_Complex) for n, v in p.items()}
        for j, p in enumerate(params)
    ]
    xm = (x + 1j * h * directions[-1]).view(_Complex)
    return float(np.sum(seed * np_forward(case, moved, xm, mask, init)[0]).imag / h)


def builtin_grad_checks(case, params, x, mask, init, seed, rng, singles=3):
    """[(what, want, parameter directions, input direction)]: complex-step directional
    derivatives along random directions: every parameter and the input at once, the parameters
    alone, the input alone, and `singles` parameters (random ones) each alone."""
    dirs = [{n: rng.standard_normal(v.shape) for n, v in p.items()} for p in params]
    dx = rng.standard_normal(x.shape)
    none = [{} for _ in params]
    checks = [("all", dirs, dx), ("parameters", dirs, None), ("input", none, dx)]
    names = [(j, n) for j, p in enumerate(params) for n in p]
    for i in rng.permutation(len(names))[:singles]:
        j, n = names[i]
        one = [{n: dirs[j][n]} if k == j else {} for k in range(len(params))]
        checks.append((f"layer {j} {n}", one, None))
    return [
        (
            what,
            _directional(
                case, params, x, mask, init, seed, d + [np.zeros_like(x) if v is None else v]
            ),
            d,
            v,
        )
        for what, d, v in checks
    ]


def interpret_grads(case, params, x, mask, init, seed):
    """d sum(seed * outputs) / d(input, every parameter) of the custom stack: its unrolled
    trace (tn ops of the same random program) differentiated, run by the reference
    interpreter. A masked layer's zero rows (piecewise constant in the inputs) are the NumPy
    forward's, given to the trace as constant 0/1 columns."""
    keeps = []
    np_forward(case, params, x, mask, init, keeps)
    L = len(case.layers)
    masking = case.masking or [None] * L
    names = [list(p) for p in params]
    flat = [p[n] for p, ns in zip(params, names) for n in ns]
    n_init = [len(s) for s in init]

    def loss(xv, sv, mv, kv, *rest):
        ps, k = [], 0
        for ns in names:
            ps.append(dict(zip(ns, rest[k : k + len(ns)])))
            k += len(ns)
        st, k = [], 0
        for n in n_init:
            st.append(list(rest[len(flat) + k : len(flat) + k + n]))
            k += n
        total = None
        for t in range(x.shape[0]):
            h = xv[t]
            mt = mv[t]
            for j, lay in enumerate(case.layers):
                new = lay.spec.run(0, [h, *st[j]], ps[j])
                kt = kv[t * L + j]
                if masking[j] == "cell":
                    new = [kt * a for a in new]
                out = kt * new[lay.out_state] if masking[j] else new[lay.out_state]
                st[j] = [mt * a + (1.0 - mt) * b for a, b in zip(new, st[j])]
                h = mt * out
            term = tn.sum(h * sv[t])
            total = term if total is None else total + term
        return total

    m = np.ones(x.shape[:2] + (1,)) if mask is None else mask
    states = [s for ss in init for s in ss]
    arrays = [x, seed, m, np.stack(keeps), *flat, *states]
    graph = tn.grad(tn.trace(loss, *arrays), wrt=[0] + list(range(4, 4 + len(flat))))
    got = interpret(graph, *arrays)
    out, k = [], 2
    for ns in names:
        out.append(dict(zip(ns, got[k : k + len(ns)])))
        k += len(ns)
    return got[1], out


# ---------------------------------------------------------------- running a case


def _close(got, want, tol, what):
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def run_case(case: FastCase, tol: float | None = None, tamper=None) -> dict:
    """Runs every call of `case`, checking each against the oracles; returns counters of the
    fast paths it crossed (for the tool's summary). `tamper(k, y, gx, cells, held)`, called
    after call k's backward, lets a test spoil a result to see the checks fail."""
    from tapernn import own_threads, scan_split

    f64 = case.dtype == np.float64
    tol = tol if tol is not None else (1e-12 if f64 else 3e-3)
    dtol = tol * (10 if f64 else 3)  # a directional derivative: a sum over every entry
    rng = np.random.default_rng(case.seed + 12345)
    m, cells = build(case)
    n_states = [lay.n_states for lay in case.layers]
    state = [[np.zeros((case.B, lay.H)) for _ in range(n)] for lay, n in zip(case.layers, n_states)]
    held = []
    acc = None
    before = (scan_split.SPLIT_CALLS[0], own_threads.SPLIT_GEMMS[0])
    custom = case.layers[0].spec is not None
    for k, call in enumerate(case.calls):
        if call.bump:
            for c in cells:
                for p in c.parameters():
                    p.data[...] += call.bump * rng.standard_normal(p.data.shape).astype(
                        p.data.dtype
                    )
        if call.forget:
            m.forget()
            state = [[np.zeros_like(s) for s in ss] for ss in state]
        if not case.remember:
            state = [[np.zeros_like(s) for s in ss] for ss in state]
        x = rng.standard_normal((call.T, case.B, case.layers[0].D)).astype(case.dtype)
        for t, b in call.zeros or ():
            x[t, b] = 0
        g = rng.standard_normal((call.T, case.B, case.layers[-1].H)).astype(case.dtype)
        lengths = None if call.lengths is None else np.array(call.lengths)
        mask = None
        if lengths is not None:
            mask = (np.arange(call.T)[:, None] < lengths[None, :])[..., None].astype(float)
        params = [
            {n: v.data.astype(np.float64) for n, v in c.named_parameters().items()} for c in cells
        ]
        if call.zero_grad:
            m.zero_grad_parameters()
            acc = [{n: np.zeros_like(v) for n, v in p.items()} for p in params]
        y = m.forward(x) if lengths is None else m.forward(x, lengths=lengths)
        gx = m.backward(x, g, need_grad_input=call.need_grad_input)
        where = f"call {k}"
        if tamper is not None:
            tamper(k, y, gx, cells, held)
        assert y.dtype == case.dtype, (where, y.dtype)
        x64, g64 = x.astype(np.float64), g.astype(np.float64)
        want_y, new_state = np_forward(case, params, x64, mask, state)
        _close(np.asarray(y), want_y, tol, f"{where}: output")
        if call.need_grad_input:
            assert gx is not None and gx.dtype == case.dtype, (
                where,
                None if gx is None else gx.dtype,
            )
        else:
            assert gx is None, where
        grads = [
            {n: v.grad.astype(np.float64) for n, v in c.named_parameters().items()} for c in cells
        ]
        if custom:
            want_dx, want_g = interpret_grads(case, params, x64, mask, state, g64)
            for j, (p, w) in enumerate(zip(params, want_g)):
                for n in p:
                    acc[j][n] = acc[j][n] + w[n]
                    _close(grads[j][n], acc[j][n], tol, f"{where}: layer {j} grad {n}")
            if call.need_grad_input:
                _close(np.asarray(gx, np.float64), want_dx, tol, f"{where}: grad input")
        else:
            # the gradients of THIS call: .grad minus what accumulated before it
            this = [{n: grads[j][n] - acc[j][n] for n in p} for j, p in enumerate(params)]
            for what, want, dirs, dxd in builtin_grad_checks(
                case, params, x64, mask, state, g64, rng
            ):
                got = sum(float(np.sum(this[j][n] * d[n])) for j, d in enumerate(dirs) for n in d)
                if dxd is not None:
                    if not call.need_grad_input:
                        continue
                    got += float(np.sum(np.asarray(gx, np.float64) * dxd))
                assert abs(got - want) <= dtol * max(1.0, abs(want)), (
                    f"{where}: directional derivative ({what}) {got!r} != {want!r}"
                )
            acc = grads
        if case.remember:
            state = [[np.asarray(s) for s in ss] for ss in new_state]
        held.append((k, "output", y, np.array(y)))
        if gx is not None:
            held.append((k, "grad input", gx, np.array(gx)))
        for j, what, arr, copy in held:
            np.testing.assert_array_equal(arr, copy, err_msg=f"call {k}: call {j}'s {what} changed")
    return {
        "split": scan_split.SPLIT_CALLS[0] - before[0],
        "owned_gemms": own_threads.SPLIT_GEMMS[0] - before[1],
    }


# every fast path off, still on numba (its vecmath tanh/sigmoid/exp are not NumPy's: a few ulps
# apart, which a cell with large gains amplifies ~3x a step): a failing case that fails here too
# (against the same oracle, at the same tolerance) is ill-conditioned at that tolerance (large
# gains through the recurrence, float32 through saturated tanh), not a fast-path bug
SLOW = {
    "backend": "numba",
    "layout": "batch",
    "batch_split": "off",
    "own_threads": "off",
    "packed_gemm": False,
    "step_loops": False,
}


def slow_paths_fail(case: FastCase) -> str | None:
    """The slow paths' failure on `case` (its message's first lines), or None if they pass."""
    try:
        run_case(replace(case, options=SLOW))
    except AssertionError as e:
        return " / ".join(line for line in str(e).splitlines() if "call" in line or "Max" in line)
    return None


def kinks(case: FastCase) -> bool:
    return any(op in KINKS for lay in case.layers if lay.spec for op, _, _ in lay.spec.code)
