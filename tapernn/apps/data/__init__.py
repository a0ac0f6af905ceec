"""Text data for the character language model: the default corpus (standard-library
docstrings) and time-major batching."""

from __future__ import annotations

from .batching import Vocabulary, split_train_validation, time_major_batches
from .corpus import read_text_file, stdlib_docstrings

__all__ = [
    "Vocabulary",
    "read_text_file",
    "split_train_validation",
    "stdlib_docstrings",
    "time_major_batches",
]
