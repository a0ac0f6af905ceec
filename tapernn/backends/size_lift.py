"""Sizes out of a generated kernel's text (issue 19's cold-CI cost): every integer literal but
0 and 1 read from an int64 `dims` argument, so one text -- one cache module, one numba compile --
serves every size of a structure. Whole-program kernels (program_source), whole-loop kernels
(loop_source) and step loops (step_loop) lift their text here."""

from __future__ import annotations

import io
import re
import tokenize
from typing import Any

from .numba_backend import Unsupported


def lift_sizes(
    body: list[str], innermost: bool = True, divisors: bool = False
) -> tuple[list[str], list[int]]:
    """`body` (a kernel's indented lines) with every integer literal other than 0 and 1 -- the
    sizes, offsets, trip counts and loop lengths, the numbers a new sequence length T changes
    -- read from the kernel's `dims` argument instead (`n<k>`, k in order of appearance), and
    those literals' values: the kernel's text, and so its cache digest, has no T in it, and
    every T whose program generates this text runs its one compiled kernel with its own dims.
    Sound whatever the literals mean: the text with `dims` is the generated text, number for
    number; a T whose program differs in anything else (a loop merged, a product past DOT_MIN,
    a size 1: T = 1) generates another text, and gets a kernel of its own. 0 and 1 stay
    (indices, strides and trip counts of 1 that LLVM folds away) but as a workspace view's
    start (ProgramSource.reserve reuses a freed slice by size: at one T that is the one at 0,
    at another T another). `innermost`: innermost nested loops' counts stay literal (see
    innermost_nested; step loops lift them too: step_loop.translate). `divisors`: a literal
    right after `//` or `%` stays too (a whole-program kernel's: by a number LLVM sees, a
    division is a multiply and a shift; by one read from `dims` it is an integer division of
    20-40 cycles an element that no loop vectorises -- B >= 2 backward kernels' view indices
    ran 4-6x slower lifted, BENCHMARKS.md "hprog"). The generator's divisors are
    ratios of a view's trailing sizes (program_source.split_reshape_map), B or H, not T."""
    kept = innermost_nested(body) if innermost else set()
    text = "\n".join(body) + "\n"
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    spots = [
        (*tok.start, tok.string)
        for j, tok in enumerate(tokens)
        if tok.type == tokenize.NUMBER
        and tok.string.isdigit()
        and (int(tok.string) > 1 or [t.string for t in tokens[j - 4 : j - 2]] == ["c_view", "("])
        and tok.start[0] - 1 not in kept
        and not (divisors and tokens[j - 1].string in ("//", "%"))
    ]  # (a workspace view's start always: a slice reused at one T, not at another, starts at 0)
    lines, values = list(body), []
    by_row: dict[int, list[tuple[int, str]]] = {}
    for row, col, digits in spots:
        by_row.setdefault(row - 1, []).append((col, digits))
    k = 0
    for row in sorted(by_row):
        line, parts, last = lines[row], [], 0
        for col, digits in by_row[row]:
            parts += [line[last:col], f"n{k}"]
            values.append(int(digits))
            last, k = col + len(digits), k + 1
        lines[row] = "".join(parts) + line[last:]
    return lines, values


def lift_function(
    head: list[str], body: list[str], dims: str = "_dims", innermost: bool = False
) -> tuple[list[str], list[int]]:
    """A kernel function -- `head` (its decorator and def lines, the def taking `dims`),
    `body` (its indented lines; a line may hold several) -- with lift_sizes' sizes (innermost
    loops' counts too, unless `innermost`) read from `dims` at entry (n<k> = dims[k]), and
    those sizes: the step loops' (step_loop.translate: one text for every B, half and H) and
    the whole-loop kernels' (loop_source). Unsupported if the body names a value n<k> itself."""
    body = "\n".join(body).split("\n")
    if any(re.search(r"\bn\d+\b", line) for line in body):
        raise Unsupported("a value named like a size")
    body, values = lift_sizes(body, innermost=innermost)
    unpack = [f"    n{k} = {dims}[{k}]" for k in range(len(values))]
    return [*head, *unpack, *body], values


def sizes_written_in(text: str, dims: Any) -> str:
    """lift_function's `text` with its sizes `dims` written back in (to read, not to run)."""
    text = re.sub(r"(?m)^    n\d+ = _?dims\[\d+\]\n", "", text)
    return re.sub(r"\bn(\d+)\b", lambda m: str(dims[int(m[1])]), text)


_FOR = re.compile(r"^( *)for \w+ in range\(\d+\):$")


def innermost_nested(body: list[str]) -> set[int]:
    """The rows of `body` that open an innermost loop nested in another loop (`for i in
    range(<literal>):` whose body has no loop): lift_sizes keeps their counts literal, so LLVM
    unrolls and vectorises the small loops the time goes to. Sound whatever the count means (a
    count that differs at another T gives another text: a kernel of its own there); the
    generator makes such counts sizes other than T's (a 2-D product's columns, a value's last
    axis in a nest whose outer loops run over T; ProgramSource.matmul puts the reduction,
    over T in a weight gradient, outside), so the text is still one for every T."""
    rows, open_loops = set(), []  # (the enclosing loops' indents)
    for row, line in enumerate(body):
        indent = len(line) - len(line.lstrip(" "))
        while open_loops and open_loops[-1] >= indent:
            open_loops.pop()
        if not _FOR.match(line):
            continue
        if open_loops:
            inner = []
            for later in body[row + 1 :]:
                if len(later) - len(later.lstrip(" ")) <= indent:
                    break
                inner.append(later)
            if not any(b.lstrip().startswith("for ") for b in inner):
                rows.add(row)
        open_loops.append(indent)
    return rows
