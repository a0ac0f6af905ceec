"""The import layers (ARCHITECTURE.md): every import inside tapernn -- top-level and
function-level, TYPE_CHECKING blocks excluded -- goes from a module to one in its own layer or
a lower one, and no set of modules imports itself in a cycle. `import tapernn` and compiling
work without the graphviz package."""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tapernn"

# lowest first; "x.*" names the package x and everything in it, other entries one module
LAYERS = [
    (
        "base",
        [
            "tapernn.interrupt",
            "tapernn.aligned",
            "tapernn.errors",
            "tapernn.ops",
            "tapernn.ops.registry",
            "tapernn.ops.indexing",
            "tapernn.random",
            "tapernn.fileio",
            "tapernn.validation",
            "tapernn.blas",
            "tapernn.blas_bits",
            "tapernn.blas_gemm",
            "tapernn.blas_tuning",
            "tapernn.serialization",
            "tapernn.views",
            "tapernn.keys",
            "tapernn.tuning",
            "tapernn.launch",
            "tapernn.plan_options",
        ],
    ),
    ("graph", ["tapernn.graph"]),
    ("tracing", ["tapernn.tracing"]),
    ("functional", ["tapernn.functional"]),
    ("library", ["tapernn.library"]),  # compositions of the functional ops
    ("op set", ["tapernn.ops.*"]),  # the families: their VJPs are written with functional
    ("autodiff", ["tapernn.autodiff"]),
    ("passes", ["tapernn.passes.*"]),
    (
        "plan",
        [
            "tapernn.regions",
            "tapernn.slab_halves",
            "tapernn.memory",
            "tapernn.donate",
            "tapernn.accounting",
            "tapernn.interpret",
            "tapernn.view_strides",
        ],
    ),
    ("backends", ["tapernn.backends.*"]),  # kernel builders the lowering calls
    (
        "lowering",
        [
            "tapernn.numpy_quirks",
            "tapernn.dest_slots",
            "tapernn.keep",
            "tapernn.codegen",
            "tapernn.fused_lowering",
            "tapernn.pack_scratch",
        ],
    ),
    (
        "executor",
        [
            "tapernn.own_threads",
            "tapernn.own_bias",
            "tapernn.own_room",
            "tapernn.executor",
            "tapernn.arena",
            "tapernn.testing",
            "tapernn.optim",
        ],
    ),
    (
        "loops",
        [
            "tapernn.scan",
            "tapernn.scan_ir",
            "tapernn.scan_grad",
            "tapernn.scan_run",
            "tapernn.scan_hoist",
            "tapernn.scan_pack",
            "tapernn.scan_split",
            "tapernn.split_pack",
            "tapernn.scan_columns",
            "tapernn.scan_rebatch",
            "tapernn.scan_xs",
            "tapernn.scan_views",
            "tapernn.scan_layout",
        ],
    ),
    ("nn", ["tapernn.nn.*"]),
    ("export", ["tapernn.export.*"]),
    ("package", ["tapernn"]),  # tapernn/__init__: the public names
    ("apps", ["tapernn.apps.*", "tapernn.__main__"]),  # the applications; nothing imports them
]


def layer_of(module: str) -> int:
    for k, (_, names) in enumerate(LAYERS):
        if module in names:
            return k
    for k, (_, names) in enumerate(LAYERS):
        for name in names:
            if name.endswith(".*") and (module == name[:-2] or module.startswith(name[:-1])):
                return k
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and ARCHITECTURE.md)")


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_pkg: bool, modules: set[str]):
        self.module, self.is_pkg, self.modules, self.found = module, is_pkg, modules, set()

    def visit_If(self, node):  # `if TYPE_CHECKING:` blocks are annotations only
        test = node.test
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            for n in node.orelse:
                self.visit(n)
            return
        self.generic_visit(node)

    def _add(self, name: str):
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        if name and name != self.module:
            self.found.add(name)

    def visit_Import(self, node):
        for a in node.names:
            if a.name.split(".")[0] == "tapernn":
                self._add(a.name)

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        if base.split(".")[0] != "tapernn":
            return
        for a in node.names:
            full = f"{base}.{a.name}"
            self._add(full if full in self.modules else base)


def import_graph() -> nx.DiGraph:
    files = {_name(p): p for p in PKG.rglob("*.py")}
    g = nx.DiGraph()
    for module, path in files.items():
        g.add_node(module)
        v = _Imports(module, path.name == "__init__.py", set(files))
        v.visit(ast.parse(path.read_text(encoding="utf-8")))
        g.add_edges_from((module, target) for target in v.found)
    return g


def test_every_import_goes_down_the_layers():
    g = import_graph()
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, b in g.edges
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    cycles = sorted(
        sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1
    )
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_and_a_cyclic_import(tmp_path, monkeypatch):
    # the walk itself must be able to fail: a core module importing export, and a cycle
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path / "tapernn")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "tapernn").mkdir()
    (tmp_path / "tapernn" / "__init__.py").write_text("")
    (tmp_path / "tapernn" / "graph.py").write_text("def f():\n    from .export import x\n")
    (tmp_path / "tapernn" / "export.py").write_text("from .graph import f\n")
    g = import_graph()
    assert ("tapernn.graph", "tapernn.export") in g.edges
    assert layer_of("tapernn.export") > layer_of("tapernn.graph")
    assert [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1] == [
        ["tapernn.export", "tapernn.graph"]
    ]


def test_import_and_compile_without_graphviz():
    probe = (
        "import sys; sys.modules['graphviz'] = None\n"
        "import numpy as np, tapernn as tn\n"
        "f = tn.compile(tn.trace(lambda x: tn.tanh(x) * 2, np.ones(3)))\n"
        "assert np.allclose(f(np.ones(3)), 2 * np.tanh(1))\n"
        "assert 'graphviz' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
        "try:\n    tn.to_dot\nexcept ImportError as e:\n    assert 'graphviz' in str(e)\n"
        "else:\n    raise AssertionError('to_dot without graphviz')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert r.returncode == 0, r.stderr
