"""The upper bound of asking for the step loops (backends/step_loop.py) at "auto"'s start call
(hloopreq, BENCHMARKS.md): a perfect prediction of their (source, argument types), replayed from
an earlier process. Put this folder on PYTHONPATH after the checkout (Python imports
sitecustomize at startup):

  $HLOOPREQ_RECORD=file  appends each step loop's (source, pickled numba key) as it compiles;
  $HLOOPREQ_ORACLE=file  asks the compile worker for each recorded pair when "auto"'s numba plan
                         has been traced (TwoPlans._compile's end: after its own kernels' jobs),
                         into step_loop's per-source kernel table, where the real first split
                         call's StepLoop.prepare then finds the kernel compiled for its key.

    python tools/early_calls.py --backend auto --cache shared --calls 110 --wait \\
        --trees "$PWD:$PWD/tools/loop_oracle" --env HLOOPREQ_RECORD=/tmp/keys.jsonl
    python tools/early_calls.py --backend auto --cache cold --calls 130 --runs 2 --nice \\
        --trees "$PWD:$PWD/tools/loop_oracle" --env-b HLOOPREQ_ORACLE=/tmp/keys.jsonl

A measuring aid only: the library cannot know these keys before the call (the notes say why)."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

RECORD, ORACLE = os.environ.get("HLOOPREQ_RECORD"), os.environ.get("HLOOPREQ_ORACLE")
_KEEP: list[Any] = []  # (the oracle's handles: background.request keeps weak references)


class _Oracle:
    """A background handle compiling one recorded step loop for its recorded key."""

    def __init__(self, source: str, key: bytes):
        self.source, self.key = source, key

    def prepare(self, _key: Any) -> bool:
        from tapernn.backends import step_loop

        key = pickle.loads(self.key)  # (this tool's own file)
        return step_loop.StepLoop(self.source, [], 1, False).prepare(key)


def _install() -> None:
    from tapernn.backends import background, step_loop

    if RECORD:
        prepare = step_loop.StepLoop.prepare

        def recorded(self: Any, key: tuple) -> bool:
            done = prepare(self, key)
            with open(RECORD, "a") as f:
                f.write(json.dumps([self.source, pickle.dumps(key).hex()]) + "\n")
            return done

        step_loop.StepLoop.prepare = recorded
    if ORACLE:
        from tapernn.nn import auto_plans

        compile_ = auto_plans.TwoPlans._compile

        def asking(two: Any, trace: Any) -> None:
            compile_(two, trace)
            with open(ORACLE) as f:
                pairs = dict.fromkeys(tuple(json.loads(line)) for line in f)
            for source, key in pairs:
                handle = _Oracle(source, bytes.fromhex(key))
                _KEEP.append(handle)
                background.request(handle, (key,))

        auto_plans.TwoPlans._compile = asking


if RECORD or ORACLE:
    _install()
