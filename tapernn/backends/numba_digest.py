"""The numba side of get_grad_hidden_state's fingerprint (nn/tap_digest.py): one pass over an
array's 64-bit words, vectorised, two 64-bit sums -- ~50 GB/s where zlib's CRC-32 runs at ~4
(issue 19, branch htap). Imported only once numba is (tap_digest asks the background worker)."""

from __future__ import annotations

import numpy as np
from numba import njit

from .numba_opt import keyed

# position key and odd multiplier (the golden ratio's and a splitmix64 constant)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xD6E8FEB86659FD93)
_S = np.uint64(32)


@njit(cache=keyed(), nogil=True, error_model="numpy")
def digest(words):
    """(a, b) over the 1-D uint64 array `words`: a = sum over i of m_i(words[i]) mod 2**64 with
    m_i(w) = f((w ^ i*K1) * K2), f(z) = z ^ (z >> 32) -- each m_i a bijection of the 64-bit
    words (xor with a constant, times an odd number, an xorshift), so any change of one word
    changes a; words moved to other positions change it too (i in the key) -- and b = the XOR
    of the words (any one changed word changes it as well)."""
    a = np.uint64(0)
    b = np.uint64(0)
    for i in range(words.size):
        w = words[i]
        z = (w ^ (np.uint64(i) * _K1)) * _K2
        a += z ^ (z >> _S)
        b ^= w
    return a, b
