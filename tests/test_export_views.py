"""What a newcomer sees in the diagrams of real modules: collapsed templates, one box per module
and step, stacked layers told apart, the backward view, compiled programs and the legend."""
from __future__ import annotations

import re

import pytest

import tapernn as tn
from tapernn.models import build_model


def traced(name: str, steps: int = 3, backward: bool = False):
    tn.manual_seed(0)
    model, x, grad = build_model(name, steps, 2, 4)
    model.forward(x)
    if backward:
        model.backward(x, grad)
    return model


def clusters(src: str) -> list[str]:
    return re.findall(r"subgraph (cluster_step_\d+)", src)


@pytest.mark.parametrize("steps", [2, 3, 5])
@pytest.mark.parametrize("level", ["op", "module"])
def test_collapse_draws_the_step_template_once_with_a_loop(steps, level):
    src = tn.to_dot(traced("rnn", steps), level=level, collapse=True).source
    assert clusters(src) == ["cluster_step_0"], src  # was t=0, t=1 and "t = 2 … T-1" (or T=3: 3)
    assert f"t = 0 … {steps - 1}   ×{steps}" in src
    template = src[src.index("subgraph cluster_step_0"):]
    template = set(re.findall(r"^\t\t(\w+) \[", template[:template.index("\t}")], re.MULTILINE))
    loops = [re.match(r"\s*(\w+) -> (\w+)", line).groups() for line in src.splitlines()
             if "1a7f37" in line]  # the recurrent colour
    assert len(loops) == 1 and set(loops[0]) <= template  # h_t -> t+1 loops back into it
    if level == "op":
        assert "t+1" in src and "getitem [t]" in src
        zeros = re.search(r'(n\d+) \[label="zeros\n2×4\nat t = 0"', src)
        assert zeros and src.index(zeros.group(0)) < src.index("subgraph cluster_step_0")
