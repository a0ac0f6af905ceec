"""How a model prints (Module.__repr__): its line, then the tree of its children under their
names, as Torch7 and PyTorch print a model."""

from __future__ import annotations

from typing import Any


def tree(module: Any) -> str:
    """`module`'s line, then each child's tree indented under its name -- unless it has no
    children, its line already names them all (`nn.Repeater(nn.LSTM(3 -> 4), 3)`,
    `nn.SequencerCriterion @ nn.MSECriterion`), or its class keeps them out of its print
    (`repr_children = False`: FastLSTM's Linear layers are parts of its equations, as LSTM's
    weights, which Torch7 did not print either)."""
    head, children = module.describe(), list(module.named_children())
    if not getattr(module, "repr_children", True) or all(
        child.describe() in head for _, child in children
    ):
        return head
    lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in children]
    return "\n".join([f"{head} {{", *lines, "}"])
