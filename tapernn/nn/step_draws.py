"""The random inputs of a rolled loop (nn.rolled): each random site of the step body (a dropout
mask, a drawn input) is one (n, ...) input of the scan, and all of a loop's sites are drawn at
bind exactly as the unrolled program draws them -- step by step in the order the loop runs its
positions, the sites of a step in the step's order, each from the generator it names -- so a
seed gives the same masks rolled or unrolled, and the same as before loops held masks."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .. import random as tn_random
from ..errors import TapernnError
from ..graph import Node


def generator_of(rng: Any) -> np.random.Generator:
    """The generator a mask is drawn from: `rng` (a function: the one it returns now, e.g. a
    module's current `rng`), else tapernn's global one."""
    gen = rng() if callable(rng) else rng
    return gen or tn_random.generator()


def scaled_keep(u: np.ndarray, p: float, dtype: np.dtype) -> np.ndarray:
    """Inverted dropout's mask from uniform draws `u`: 1 / (1 - p) where u >= p, else 0."""
    return (u >= p).astype(dtype) * dtype.type(1.0 / (1.0 - p))


class StepDraws:
    """The draws of one loop's random sites (nn.rolled.RandomSite, in the step's order) over its
    n positions, `reverse`: the loop runs its positions backwards (row n - 1 first). Bound as
    one input per site: `take(0)` draws every site's block, `take(j)` hands site j's out (the
    binders run in input order, site 0's first: nn.binding)."""

    def __init__(self, sites: list, n: int, reverse: bool, first: int = 0):
        self.sites, self.n, self.reverse = list(sites), n, reverse
        self.first = first  # the unrolled program's number of the loop's first draw
        self.last: list | None = None

    def names(self, j: int) -> list[tuple[int, str]]:
        """(row, the unrolled program's name of that draw) of site j, in draw order."""
        s, k = self.sites[j], len(self.sites)
        return [
            (self.n - 1 - i if self.reverse else i, f"{s.name}{self.first + i * k + j}")
            for i in range(self.n)
        ]

    def take(self, j: int) -> np.ndarray:
        if j == 0:
            self.last = self.draw()
        blocks = self.last
        if blocks is None:
            raise TapernnError(f"a loop's random input {j} was bound before its first one")
        if j == len(self.sites) - 1:
            self.last = None
        return blocks[j]

    def draw(self) -> list[np.ndarray]:
        """Every site's (n, ...) block. Masks from one generator come from one draw of
        (n, all their entries): NumPy fills it in order, one double per entry, as the
        unrolled program's per-step draws take them (tests/test_rolled_dropout.py checks the
        stream against per-step draws); drawn inputs are drawn step by step."""
        if any(s.draw is not None for s in self.sites):
            return self._stepwise()
        gens = [generator_of(s.rng) for s in self.sites]
        blocks: list = [None] * len(self.sites)
        for gen in {id(g): g for g in gens}.values():
            members = [k for k, g in enumerate(gens) if g is gen]
            sizes = [int(np.prod(self.sites[k].shape)) for k in members]
            u = gen.random((self.n, sum(sizes)))
            if self.reverse:
                u = u[::-1]
            at = 0
            for k, size in zip(members, sizes):
                s = self.sites[k]
                keep = scaled_keep(u[:, at : at + size], s.p, s.dtype)
                blocks[k] = np.ascontiguousarray(keep).reshape((self.n,) + s.shape)
                at += size
        return blocks

    def _stepwise(self) -> list[np.ndarray]:
        blocks = [np.empty((self.n,) + s.shape, s.dtype) for s in self.sites]
        rows = range(self.n - 1, -1, -1) if self.reverse else range(self.n)
        for row in rows:
            for block, s in zip(blocks, self.sites):
                if s.draw is None:
                    block[row] = scaled_keep(generator_of(s.rng).random(s.shape), s.p, s.dtype)
                else:
                    block[row] = s.draw()
        return blocks


def per_step(exe: Any, args: list) -> tuple[Any, list]:
    """`exe` and its call's arguments as the unrolled program takes them: each loop's (n, ...)
    random input split into its rows, named as the unrolled draws (nn.state_grads.args_like
    hands a rolled call's masks to its unrolled variant)."""
    if not exe.step_draws:
        return exe, args
    nodes, out = [], []
    for node, a in zip(exe.arg_nodes, args):
        at = exe.step_draws.get(node)
        if at is None:
            nodes.append(node)
            out.append(a)
            continue
        group, j = at
        for row, name in group.names(j):
            attrs = {"kind": "random"}
            nodes.append(Node("input", (), attrs, node.shape[1:], node.dtype, name=name))
            out.append(a[row])
    view = copy.copy(exe)
    view.arg_nodes = nodes
    return view, out
