"""Random recurrent cells for differential fuzzing (tests/test_cell_fuzz.py, tools/fuzz_cells.py).

A random program -- a list of instructions on per-step values: matmuls against parameters,
gates cut by split and slice, elementwise ops, stack-sums, 0-d reductions broadcast back --
becomes an `nn.Cell` subclass (traced and compiled by tapernn) and is also evaluated directly
with NumPy, step by step (the oracle: it shares nothing with tapernn's tracer or compiler).
A case stacks 1-2 such cells in a Sequencer over T in 1..5, batched or not, with 1-3 states,
some returned twice (aliasing) or passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

import tapernn as tn
from tapernn import nn


def _np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# op -> (tapernn function, NumPy function, source template); operands are values, attrs follow
OPS = {
    "matmul": (lambda a, w: a @ w, lambda a, w: a @ w, "{0} @ self.{w}"),
    "matmul_t": (
        lambda a, w: a @ tn.transpose(w),
        lambda a, w: a @ w.T,
        "{0} @ tn.transpose(self.{w})",
    ),  # a Linear: weight (out, in)
    "rsub": (lambda a: 1.0 - a, lambda a: 1.0 - a, "1.0 - {0}"),
    "bias": (lambda a, b: a + b, lambda a, b: a + b, "{0} + self.{b}"),
    "add": (lambda a, b: a + b, lambda a, b: a + b, "{0} + {1}"),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, "{0} - {1}"),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, "{0} * {1}"),
    "maximum": (tn.maximum, np.maximum, "tn.maximum({0}, {1})"),
    "minimum": (tn.minimum, np.minimum, "tn.minimum({0}, {1})"),
    "div": (
        lambda a, b: a / (2.0 + tn.tanh(b)),
        lambda a, b: a / (2.0 + np.tanh(b)),
        "{0} / (2.0 + tn.tanh({1}))",
    ),
    "tanh": (tn.tanh, np.tanh, "tn.tanh({0})"),
    "sigmoid": (tn.sigmoid, _np_sigmoid, "tn.sigmoid({0})"),
    "relu": (tn.relu, lambda a: np.maximum(a, 0), "tn.relu({0})"),
    "neg": (lambda a: -a, np.negative, "-{0}"),
    "expt": (lambda a: tn.exp(tn.tanh(a)), lambda a: np.exp(np.tanh(a)), "tn.exp(tn.tanh({0}))"),
    "logsig": (
        lambda a: tn.log(tn.sigmoid(a)),
        lambda a: -np.logaddexp(0, -a),
        "tn.log(tn.sigmoid({0}))",
    ),
    "scale": (lambda a, c: a * c, lambda a, c: a * c, "{0} * {c!r}"),
    "split": (
        lambda a, k, j: tn.split(a, k, axis=-1)[j],
        lambda a, k, j: np.split(a, k, axis=-1)[j],
        "tn.split({0}, {k}, axis=-1)[{j}]",
    ),
    "slice": (
        lambda a, lo, hi: a[..., lo:hi],
        lambda a, lo, hi: a[..., lo:hi],
        "{0}[..., {lo}:{hi}]",
    ),
    "concat": (
        lambda a, b: tn.concat([a, b], axis=-1),
        lambda a, b: np.concatenate([a, b], axis=-1),
        "tn.concat([{0}, {1}], axis=-1)",
    ),
    "catmul": (  # (a concatenated GEMM operand: API.md's MGU, split_concat_matmuls)
        lambda a, b, w: tn.concat([a, b], axis=-1) @ w,
        lambda a, b, w: np.concatenate([a, b], axis=-1) @ w,
        "tn.concat([{0}, {1}], axis=-1) @ self.{w}",
    ),
    "catmul3": (
        lambda a, b, c, w: tn.concat([a, b, c], axis=-1) @ w,
        lambda a, b, c, w: np.concatenate([a, b, c], axis=-1) @ w,
        "tn.concat([{0}, {1}, {2}], axis=-1) @ self.{w}",
    ),
    "stacksum": (
        lambda a, b: tn.sum(tn.stack([a, b]), axis=0),
        lambda a, b: np.sum(np.stack([a, b]), axis=0),
        "tn.sum(tn.stack([{0}, {1}]), axis=0)",
    ),
    "rsum": (lambda a: tn.sum(a) * 0.1, lambda a: np.sum(a) * 0.1, "tn.sum({0}) * 0.1"),
    "rmax": (tn.max, np.max, "tn.max({0})"),
    "rmean": (tn.mean, np.mean, "tn.mean({0})"),
    "rowsum": (
        lambda a: tn.sum(a, axis=-1, keepdims=True) * 0.5,
        lambda a: np.sum(a, axis=-1, keepdims=True) * 0.5,
        "tn.sum({0}, axis=-1, keepdims=True) * 0.5",
    ),
}
UNARY = ["tanh", "sigmoid", "neg", "expt", "logsig", "rsub"] * 2 + ["relu"]
BINARY = ["add", "sub", "mul", "div", "stacksum"] * 3 + ["maximum", "minimum"]
_WEIGHTED = ("matmul", "matmul_t", "catmul", "catmul3", "bias")  # ops reading a parameter
KINKS = {"relu", "maximum", "minimum", "rmax"}  # not differentiable everywhere


@dataclass
class CellSpec:
    """One random cell: D inputs, H hidden, `states` state names; `code` is a list of
    (op, operand ids, attrs); value 0 is x, 1..states the states, then one per instruction
    (kinds: width w >= 1 over the lead dims, or 0 for a 0-d value)."""

    D: int
    H: int
    states: int
    code: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # name -> shape
    returns: tuple = ()
    output: int = 0  # the state the cell outputs (an `output` override when not 0)

    def run(self, ops: int, values: list, params: dict) -> tuple:
        """Evaluate with ops=0 (tapernn) or 1 (NumPy); values = [x, *states]."""
        values = list(values)
        for op, args, attrs in self.code:
            fn = OPS[op][ops]
            operands = [values[a] for a in args]
            if op in _WEIGHTED:
                operands.append(params[attrs["b" if op == "bias" else "w"]])
                values.append(fn(*operands))
            else:
                values.append(fn(*operands, **attrs))
        return tuple(values[r] for r in self.returns)

    def pruned(self) -> CellSpec:
        """The same cell without instructions no state reads (and their parameters): what a
        failing case prints, once the failure is checked to survive pruning."""
        n_in = 1 + self.states
        live = set(self.returns)
        for k in range(len(self.code) - 1, -1, -1):
            if n_in + k in live:
                live.update(self.code[k][1])
        renum = {v: v for v in range(n_in)}
        code, params = [], {}
        for k, (op, args, attrs) in enumerate(self.code):
            if n_in + k in live:
                renum[n_in + k] = n_in + len(code)
                code.append((op, tuple(renum[a] for a in args), attrs))
                for key in ("w", "b"):
                    if op in _WEIGHTED and key in attrs:
                        params[attrs[key]] = self.params[attrs[key]]
        return CellSpec(
            self.D,
            self.H,
            self.states,
            code,
            params,
            tuple(renum[r] for r in self.returns),
            self.output,
        )

    def source(self, name: str = "FuzzCell") -> str:
        """The cell as Python source (for turning a failing case into a regression test)."""
        states = [f"s{k}" for k in range(self.states)]
        names = ["x"] + states
        lines = [
            f"class {name}(nn.Cell):",
            f"    state_names = {tuple(states)!r}",
            "",
            "    def __init__(self, params):",
            f"        super().__init__({self.D}, {self.H})",
            "        for key, value in params.items():  # "
            + ", ".join(f"{k}{tuple(s)}" for k, s in self.params.items()),
            "            self.parameter(key, value.shape, init=value)",
            "",
            f"    def step(self, x, {', '.join(states)}):",
        ]
        for k, (op, args, attrs) in enumerate(self.code):
            names.append(f"v{k}")
            lines.append(f"        v{k} = " + OPS[op][2].format(*[names[a] for a in args], **attrs))
        lines.append(f"        return {', '.join(names[r] for r in self.returns)}")
        if self.output:
            lines += [
                "",
                f"    def output(self, {', '.join(states)}):",
                f"        return s{self.output}",
            ]
        return "\n".join(lines)


@dataclass
class Case:
    seed: int
    cells: list
    T: int
    batch: tuple
    dtype: type
    fd: bool  # also check gradients by finite differences
    params: list  # per cell {name: array}
    x: np.ndarray
    seed_grad: np.ndarray
    # per cell None / "cell" (cell.mask_zero()) / "module" (nn.MaskZero(cell, 1)), and the
    # Sequencer's lengths= (batched): tests/cell_fuzz_mask.py draws them
    masking: list | None = None
    lengths: np.ndarray | None = None

    def describe(self) -> str:
        head = (
            f"# seed {self.seed}: T={self.T} batch={self.batch} "
            f"dtype={np.dtype(self.dtype).name} cells={len(self.cells)}"
        )
        return "\n\n".join([head] + [c.source(f"FuzzCell{k}") for k, c in enumerate(self.cells)])


class _Gen:
    """Random program builder for one cell."""

    def __init__(self, rng: np.random.Generator, D: int, H: int, states: int, concat=False):
        self.rng, self.spec = rng, CellSpec(D, H, states)
        self.concat = concat  # gate blocks often concat([x, s, ...]) @ W (MGU's style)
        self.width = [D] + [H] * states  # per value: width (0: a 0-d value)

    def pick(self, ok=lambda w: True) -> int | None:
        ids = [k for k, w in enumerate(self.width) if ok(w)]
        if not ids:
            return None
        recent = ids[-4:]  # favour recent values: deeper chains
        return int(self.rng.choice(recent if self.rng.random() < 0.6 else ids))

    def emit(self, op: str, args: list, width: int, **attrs) -> int:
        self.spec.code.append((op, tuple(args), attrs))
        self.width.append(width)
        return len(self.width) - 1

    def param(self, prefix: str, shape: tuple) -> str:
        name = f"{prefix}{len(self.spec.params)}"
        self.spec.params[name] = shape
        return name

    def matmul(self, a: int, out: int) -> int:
        """a @ W, or a @ W^T with W (out, in) as Linear keeps it; a weight of the right shape
        is often reused (one W read by several matmuls: gate fusion and hoisting material)."""
        op, shape = (
            ("matmul", (self.width[a], out))
            if self.rng.random() < 0.7
            else ("matmul_t", (out, self.width[a]))
        )
        prefix = "t" if op == "matmul_t" else "w"
        same = [name for name, s in self.spec.params.items() if s == shape and name[0] == prefix]
        name = (
            str(self.rng.choice(same))
            if same and self.rng.random() < 0.4
            else self.param(prefix, shape)
        )
        return self.emit(op, [a], out, w=name)

    def concat_matmul(self, out: int) -> int:
        """concat([x, s]) @ W or with a third part (any value: a state, a product of one, x
        again), the parts in any order, W (total width, out) often reused."""
        parts = [0, int(self.rng.integers(1, 1 + self.spec.states))]
        if self.rng.random() < 0.4:
            parts.append(self.pick(lambda w: w > 0))
        parts = [parts[j] for j in self.rng.permutation(len(parts))]
        shape = (sum(self.width[p] for p in parts), out)
        same = [n for n, s in self.spec.params.items() if s == shape and n[0] == "c"]
        reuse = same and self.rng.random() < 0.3
        name = str(self.rng.choice(same)) if reuse else self.param("c", shape)
        return self.emit("catmul" if len(parts) == 2 else "catmul3", parts, out, w=name)

    def gate_block(self) -> None:
        """x @ Wx + s @ Wh + b, cut into k gates by split (or slices)."""
        H, k = self.spec.H, int(self.rng.integers(2, 5))
        if self.concat and self.rng.random() < 0.7:
            a = self.concat_matmul(k * H)
        else:
            a = self.matmul(0, k * H)
            s = self.pick(lambda w: w == H)
            if s is not None:
                a = self.emit("add", [a, self.matmul(s, k * H)], k * H)
        a = self.emit("bias", [a], k * H, b=self.param("b", (k * H,)))
        for j in self.rng.permutation(k)[: int(self.rng.integers(1, k + 1))]:
            if self.rng.random() < 0.5:
                g = self.emit("split", [a], H, k=k, j=int(j))
            else:
                g = self.emit("slice", [a], H, lo=int(j) * H, hi=int(j + 1) * H)
            self.emit(str(self.rng.choice(["sigmoid", "tanh"] * 3 + ["relu"])), [g], H)

    def step(self) -> None:
        r, H = self.rng.random(), self.spec.H
        if r < 0.15:
            self.gate_block()
        elif r < 0.3:
            a = (
                self.pick(lambda w: w > 0)
                if self.rng.random() < 0.6
                else int(self.rng.integers(1, 1 + self.spec.states))
            )  # a state: recurrent matmuls
            self.matmul(a, int(self.rng.choice([H, 2 * H])))
        elif r < 0.45:
            a = self.pick()
            self.emit(str(self.rng.choice(UNARY)), [a], self.width[a])
        elif r < 0.7:
            a = self.pick(lambda w: w > 0)
            w = self.width[a]
            b = (
                self.pick(lambda v: v == w or v == 0 or v == 1 and w > 1)
                if self.rng.random() < 0.8
                else a
            )  # (b is a: x * x, stack([a, a]))
            op = str(self.rng.choice(BINARY))
            if op == "stacksum" and self.width[b] != w:
                op = "add"
            v = self.emit(op, [a, b], w)
            if op == "stacksum" and self.rng.random() < 0.3:  # a stack-sum of a stack-sum
                self.emit("stacksum", [v, v if self.rng.random() < 0.5 else a], w)
        elif r < 0.8:
            a = self.pick(lambda w: w >= 2)
            if a is not None:
                w = self.width[a]
                if w % 2 == 0 and self.rng.random() < 0.5:
                    self.emit("split", [a], w // 2, k=2, j=int(self.rng.integers(2)))
                else:
                    lo = int(self.rng.integers(0, w - 1))
                    hi = int(self.rng.integers(lo + 1, w + 1))
                    self.emit("slice", [a], hi - lo, lo=lo, hi=hi)
        elif r < 0.87:
            a, b = self.pick(lambda w: w > 0), self.pick(lambda w: w > 0)
            self.emit("concat", [a, b], self.width[a] + self.width[b])
        elif r < 0.95:
            a = self.pick(lambda w: w > 0)
            v = self.emit(str(self.rng.choice(["rsum", "rmean"] * 2 + ["rmax"])), [a], 0)
            if self.rng.random() < 0.5:  # an op on the 0-d value
                self.emit(str(self.rng.choice(UNARY)), [v], 0)
        else:
            a = self.pick(lambda w: w > 1)
            if a is not None:
                self.emit("rowsum", [a], 1)

    def to_width_h(self, a: int) -> int:
        """A value of width H made from value a (0-d and narrow ones through a matmul of a
        broadcast, wide ones through a matmul)."""
        H = self.spec.H
        if self.width[a] == H:
            return a
        if self.width[a] in (0, 1):
            base = self.pick(lambda w: w == H) or 1
            return self.emit("mul", [base, a], H)
        return self.emit("tanh", [self.matmul(a, H)], H)

    def finish(self) -> CellSpec:
        S = self.spec.states
        computed = list(range(1 + S, len(self.width))) or [0]
        returns: list[int] = []
        for k in range(S):
            r = self.rng.random()
            if r < 0.1:
                returns.append(1 + k)  # passed through unchanged
            elif r < 0.2 and returns:
                returns.append(returns[-1])  # the same value as two states
            elif r < 0.45:  # a fresh update from any state (crossed: a' = f(b), b' = g(a))
                j = int(self.rng.integers(1, 1 + S))
                v = self.matmul(j, self.spec.H)
                if self.rng.random() < 0.5:
                    v = self.emit("bias", [v], self.spec.H, b=self.param("b", (self.spec.H,)))
                if self.rng.random() < 0.5:
                    v = self.emit("add", [v, self.to_width_h(0)], self.spec.H)
                returns.append(v)
            else:  # the last values computed, else any
                a = (
                    computed[-1 - k]
                    if k < len(computed) and self.rng.random() < 0.7
                    else self.pick()
                )
                returns.append(self.to_width_h(a))
        if all(r <= S for r in returns):  # something computed should come out
            returns[0] = self.to_width_h(len(self.width) - 1)
        # states stay in [-1, 1]: no growth compounding over the steps (overflow)
        squashed = {
            r: r
            if r <= S or self.spec.code[r - 1 - S][0] in ("tanh", "sigmoid")
            else self.emit("tanh", [r], self.spec.H)
            for r in dict.fromkeys(returns)
        }
        self.spec.returns = tuple(squashed[r] for r in returns)
        if S > 1 and self.rng.random() < 0.15:
            self.spec.output = int(self.rng.integers(1, S))
        return self.spec


def pruned_case(case: Case) -> Case:
    """`case` with every cell pruned (CellSpec.pruned) and only the parameters it still uses."""
    cells = [c.pruned() for c in case.cells]
    params = [{k: p[k] for k in c.params} for c, p in zip(cells, case.params)]
    return replace(case, cells=cells, params=params)


# widths and batch sizes of make_case(wide=True) (tools/fuzz_cells.py --wide, hfuzz): the
# remainders of AVX2's 4 float64 / 8 float32 lanes and of AVX-512's 8 / 16, and past a vector
WIDE = (1, 3, 5, 7, 9, 17, 33)


def _width(rng, wide: bool) -> int:
    return int(rng.choice(WIDE)) if wide else int(rng.integers(1, 5))


def make_case(seed: int, concat: bool = False, wide: bool = False) -> Case:
    """Case `seed`; `concat`: its gate blocks often written concat([x, s, ...]) @ W; `wide`:
    widths and batch sizes from WIDE (a seed's other draws unchanged)."""
    rng = np.random.default_rng(seed)
    n_cells = 1 if rng.random() < 0.75 else 2
    D = _width(rng, wide)
    cells, params = [], []
    for _ in range(n_cells):
        H = _width(rng, wide)
        gen = _Gen(rng, D, H, int(rng.integers(1, 4)), concat)
        for _ in range(int(rng.integers(1, 10))):
            gen.step()
        spec = gen.finish()
        cells.append(spec)
        params.append({k: rng.standard_normal(s) * 0.6 for k, s in spec.params.items()})
        D = H
    T = int(rng.integers(1, 6))
    batch = () if rng.random() < 0.35 else (int(rng.integers(1, 4)),)
    if wide and batch:
        batch = (int(rng.choice(WIDE)),)
    dtype = np.float32 if rng.random() < 0.15 else np.float64
    x = rng.standard_normal((T,) + batch + (cells[0].D,))
    seed_grad = rng.standard_normal((T,) + batch + (cells[-1].H,))
    kinks = any(op in KINKS for c in cells for op, _, _ in c.code)
    fd = dtype == np.float64 and not kinks and rng.random() < 0.3
    return Case(seed, cells, T, batch, dtype, fd, params, x, seed_grad)


def make_cell(spec: CellSpec, params: dict, name: str = "FuzzCell") -> nn.Cell:
    def __init__(self, values):
        nn.Cell.__init__(self, spec.D, spec.H)
        for key, value in values.items():
            self.parameter(key, value.shape, init=value)

    def step(self, x, *states):
        return spec.run(0, [x, *states], {k: getattr(self, k) for k in spec.params})

    body = {
        "state_names": tuple(f"s{k}" for k in range(spec.states)),
        "__init__": __init__,
        "step": step,
    }
    if spec.output:
        body["output"] = lambda self, *states: states[spec.output]
    cls = type(name, (nn.Cell,), body)
    return cls(params)


def numpy_outputs(case: Case, params: list | None = None, x: np.ndarray | None = None):
    """The oracle: every cell's program evaluated with NumPy, step by step, from zero states.
    Masked (Element-RNN): a cell's row whose input row is all zeros outputs zeros, and "cell"
    (mask_zero) resets its states; lengths=: a row's padded inputs are zeros, its states held
    and its outputs zeros past its length."""
    params = case.params if params is None else params
    x = case.x if x is None else x
    masking = case.masking or [None] * len(case.cells)
    real = np.ones((case.T,) + case.batch + (1,))
    if case.lengths is not None:
        real = (np.arange(case.T)[:, None] < case.lengths[None, :])[..., None] * 1.0
    states = [[np.zeros(case.batch + (c.H,)) for _ in range(c.states)] for c in case.cells]
    outs = []
    for t in range(case.T):
        h = np.where(real[t] != 0, x[t], 0.0)  # (padding: NaN / garbage never read)
        for k, cell in enumerate(case.cells):
            new = list(cell.run(1, [h, *states[k]], params[k]))
            keep = np.any(h != 0, axis=-1, keepdims=True) * 1.0
            if masking[k] == "cell":
                new = [keep * v for v in new]
            out = keep * new[cell.output] if masking[k] else new[cell.output]
            states[k] = [real[t] * v + (1 - real[t]) * o for v, o in zip(new, states[k])]
            h = real[t] * out
        outs.append(h)
    return np.stack(outs)


def tapernn_run(case: Case, passes=None):
    """Sequencer over the case's cells: outputs, grad of input, per-cell param grads (seed
    case.seed_grad), and a second forward (buffers reused across calls)."""
    cells = [
        make_cell(s, p, f"FuzzCell{k}") for k, (s, p) in enumerate(zip(case.cells, case.params))
    ]
    mods = [
        c.mask_zero() if how == "cell" else nn.MaskZero(c, 1) if how else c
        for c, how in zip(cells, case.masking or [None] * len(cells))
    ]
    m = nn.Sequencer(mods[0] if len(mods) == 1 else nn.Sequential(*mods))
    if case.dtype == np.float32:
        m.float()
    if passes is not None:
        m.set_passes(passes)
    x = case.x.astype(case.dtype)
    kw = {} if case.lengths is None else {"lengths": case.lengths}
    y = np.array(m.forward(x, **kw))
    m.zero_grad_parameters()
    dx = np.array(m.backward(x, case.seed_grad.astype(case.dtype)))
    grads = [{k: np.array(getattr(c, k).grad) for k in s.params} for c, s in zip(cells, case.cells)]
    again = np.array(m.forward(x, **kw))
    return y, dx, grads, again


def _close(a, b, rtol, what):
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=what)


def check_case(case: Case) -> None:
    """Default passes vs none vs NumPy (values), default vs none (gradients), finite
    differences along a random direction (float64 cases without kinks)."""
    want = numpy_outputs(case)
    runs = {name: tapernn_run(case, p) for name, p in (("default", None), ("none", []))}
    tol = 1e-9 if case.dtype == np.float64 else 2e-3
    for name, (y, dx, grads, again) in runs.items():
        assert y.dtype == case.dtype and y.shape == want.shape, (name, y.dtype, y.shape)
        _close(y, want, tol, f"{name} passes vs NumPy")
        np.testing.assert_array_equal(again, y, err_msg=f"{name}: second call differs")
    (_, dx0, g0, _), (_, dx1, g1, _) = runs["default"], runs["none"]
    _close(dx0, dx1, tol, "grad input: default vs none")
    for k, (a, b) in enumerate(zip(g0, g1)):
        for name in a:
            _close(a[name], b[name], tol, f"cell {k} grad {name}: default vs none")
    if case.fd:
        check_finite_differences(case, dx0, g0)


def check_finite_differences(case: Case, dx: np.ndarray, grads: list) -> None:
    rng = np.random.default_rng(case.seed + 1)
    vx = rng.standard_normal(case.x.shape)
    vx = vx * (np.abs(case.x).max(-1, keepdims=True) != 0)  # zero rows stay zero (masking)
    vp = [{k: rng.standard_normal(v.shape) for k, v in p.items()} for p in case.params]

    def loss(e):
        params = [{k: p[k] + e * v[k] for k in p} for p, v in zip(case.params, vp)]
        return float(np.sum(case.seed_grad * numpy_outputs(case, params, case.x + e * vx)))

    h = 1e-6
    numeric = (loss(h) - loss(-h)) / (2 * h)
    analytic = float(np.sum(dx * vx)) + sum(
        float(np.sum(g[k] * v[k])) for g, v in zip(grads, vp) for k in v
    )
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (analytic, numeric)
