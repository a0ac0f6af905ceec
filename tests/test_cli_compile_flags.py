"""`tapernn inspect` / `tapernn graph --compiled` take the compile strategy on the command line:
--backend, --option FIELD=VALUE (PlanOptions), --without-pass NAME (apps/compile_flags.py)."""

from __future__ import annotations

import pytest

from tapernn import PlanOptions
from tapernn.apps import compile_flags
from tapernn.apps.cli import main
from tapernn.passes import default_passes
from tapernn.passes.driver import pass_name

SMALL = ["--steps", "3", "--batch", "2", "--hidden", "4"]


def _passes_run(out: str) -> set[str]:
    """Pass names in the report's table (`program  pass  nodes before  nodes after  ms`)."""
    return {
        line.split()[1]
        for line in out.splitlines()
        if line.split()[:1] in (["forward"], ["backward"])
    }


def test_without_pass_leaves_that_pass_out_of_the_compile(capsys):
    assert main(["inspect", *SMALL]) == 0
    ran = _passes_run(capsys.readouterr().out)
    assert "fuse_gate_matmuls" in ran and "merge_concatenated_ops" in ran
    argv = ["inspect", *SMALL, "--without-pass", "fuse_gate_matmuls"]
    assert main([*argv, "--without-pass", "merge_concatenated_ops"]) == 0
    out = capsys.readouterr().out
    left = _passes_run(out)
    assert "fuse_gate_matmuls" not in left and "merge_concatenated_ops" not in left
    assert "fold_constants" in left
    assert (
        "compile flags: the default passes without fuse_gate_matmuls, merge_concatenated_ops" in out
    )


def test_backend_and_options_reach_the_compile(capsys):
    argv = ["inspect", *SMALL, "--backend", "numpy", "--option", "layout=feature"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "compile flags: layout=feature, backend=numpy" in out
    assert "feature-major (layout='feature')" in out
    assert "backend                   numpy" in out


@pytest.mark.parametrize(
    "text, value",
    [
        ("layout=feature", ("layout", "feature")),
        ("regions=off", ("regions", False)),
        ("step-loops=TRUE", ("step_loops", True)),
        ("strided_min_run=17", ("strided_min_run", 17)),
    ],
)
def test_an_option_is_parsed_to_its_fields_type(text, value):
    name, v = compile_flags.plan_option(text)
    assert (name, v) == value and type(v) is type(value[1])
    PlanOptions(**{name: v})  # (and PlanOptions takes it)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--option", "layout=sideways"], "PlanOptions.layout is 'batch', 'feature' or 'auto'"),
        (["--option", "nope=1"], "expected FIELD=VALUE with FIELD one of regions"),
        (["--option", "regions"], "expected FIELD=VALUE"),
        (["--option", "regions=maybe"], "expected one of true"),
        (["--option", "strided_min_run=many"], "invalid literal"),
        (["--without-pass", "fuse_everything"], "not a pass of the default list"),
        (["--backend", "jax"], "invalid choice"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "graph"])
def test_bad_compile_flags_exit_2_with_one_line(command, argv, says, capsys):
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_graph_compiled_draws_the_program_the_flags_made(tmp_path, capsys):
    files = {}
    for name, flags in [("all", []), ("without", ["--without-pass", "fuse_gate_matmuls"])]:
        files[name] = tmp_path / f"{name}.dot"
        argv = ["graph", *SMALL, "--compiled", "--backend", "numpy", *flags]
        assert main([*argv, "-o", str(files[name])]) == 0
    capsys.readouterr()
    fused, unfused = (files[k].read_text() for k in ("all", "without"))
    assert fused != unfused  # (the pass changes the compiled program drawn)


def test_every_default_pass_name_is_accepted():
    for p in default_passes():
        assert compile_flags.default_pass(pass_name(p)) == pass_name(p)
