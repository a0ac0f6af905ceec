"""Characters to ids and ids to time-major batches: B parallel streams cut into seq_len chunks,
targets shifted by one character, so consecutive batches continue each stream (truncated BPTT)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .corpus import CorpusError

UNK_TEXT = "\ufffd"  # how <unk> prints in samples


class Vocabulary:
    """Sorted characters; id 0 is <unk> (rare or unseen characters), ids 1.. are `chars`."""

    unk = 0

    def __init__(self, chars: str):
        self.chars = chars
        self.index = {c: k + 1 for k, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, min_count: int = 3) -> Vocabulary:
        # rare characters (stray Unicode in docstrings) would each cost an output row and be
        # barely trained; pooling them into <unk> keeps the softmax small
        counts = Counter(text)
        return cls("".join(sorted(c for c, n in counts.items() if n >= min_count)))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(c, 0) for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        return "".join(UNK_TEXT if k == 0 else self.chars[k - 1] for k in np.asarray(ids).ravel())


def split_train_validation(
    text: str, fraction: float = 0.05, max_validation: int = 50_000
) -> tuple[str, str]:
    """The last `fraction` of the text (at most `max_validation` chars) is validation.

    The cap bounds the time spent evaluating per epoch on the 1.5 MB default corpus.
    """
    n_val = min(max(int(len(text) * fraction), 1), max_validation)
    if len(text) - n_val < 2:
        raise CorpusError(f"the text has {len(text)} characters; too few to train on")
    return text[:-n_val], text[-n_val:]


def time_major_batches(ids: np.ndarray, batch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut `ids` into `batch` contiguous streams and those into `seq_len` chunks.

    Returns (inputs, targets), both (n_chunks, seq_len, batch) int64, with
    targets[k, t, b] the character after inputs[k, t, b]; chunk k+1 continues chunk k in every
    stream. The tail that does not fill a whole chunk is dropped (one shape, one compiled program).
    """
    ids = np.asarray(ids, dtype=np.int64)
    stream = (len(ids) - 1) // batch
    n_chunks = stream // seq_len
    if n_chunks == 0:
        raise CorpusError(
            f"{len(ids)} characters are too few for batch {batch} x seq-len "
            f"{seq_len}: need at least {batch * seq_len + 1}"
        )
    used = n_chunks * seq_len
    streams_in = ids[: batch * stream].reshape(batch, stream)[:, :used]
    streams_out = ids[1 : batch * stream + 1].reshape(batch, stream)[:, :used]

    def chunks(streams: np.ndarray) -> np.ndarray:  # (B, n*T) -> (n, T, B)
        return np.ascontiguousarray(streams.reshape(batch, n_chunks, seq_len).transpose(1, 2, 0))

    return chunks(streams_in), chunks(streams_out)
