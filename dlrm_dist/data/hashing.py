"""Counter-based hashing: random numbers that are pure functions of (key, counter).

Every generated number of `random_fast` (and, on a device, `random_fast_torch`), every
multi-hot slot of `multi_hot` and Criteo's shuffle (`Bijection`, used by `criteo_data`)
come from splitmix64 (Steele, Lea and Flood 2014): the state `key + GOLDEN * counter` through
its finalizer `mix64` (a murmur3-style bijection of 64-bit words). So any range of counters
is drawn alone, in any order, on any rank, and gives the same numbers.

Python ints (`mix64`, `derive_key`) derive keys once per table, batch or seed; numpy uint64
arrays (`mix64_array`, `hash_array`) hash many counters at once. `unit53` and `unit24` turn
hashes into exact uniforms in [0, 1). The numbers are part of the generators' contract
(tests pin them), so none of these may change.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1  # a Python int's low 64 bits: the words wrap mod 2^64
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd: splitmix64's Weyl increment
MIX1 = 0xBF58476D1CE4E5B9  # the finalizer's two multipliers (Stafford's "Mix13")
MIX2 = 0x94D049BB133111EB
UNIT53 = 2.0**-53  # a 53-bit integer times this: a double in [0, 1), exact
UNIT32 = 2.0**-32  # a 32-bit integer times this: a double in [0, 1), exact
UNIT24 = 2.0**-24  # a 24-bit integer times this: a float32 in [0, 1), exact
BLOCK = 16384  # words hashed per block by array loops, so a block's temporaries stay in L2

_MIX1, _MIX2 = np.uint64(MIX1), np.uint64(MIX2)


def mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int (its low 64 bits): a bijection of 64-bit words."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * MIX1) & MASK64
    x = ((x ^ (x >> 27)) * MIX2) & MASK64
    return x ^ (x >> 31)


def derive_key(seed: int, stream: int, index: int) -> int:
    """The key of sequence `index` of `stream` under `seed`: `hash_array(GOLDEN * counter,
    key)` are its numbers. random_fast: stream 0 (train) or 1 (eval), index the batch;
    multi_hot: stream a tag of its own, index the table."""
    key = mix64(mix64(seed + GOLDEN) ^ (stream & MASK64))
    return mix64(key + (index & MASK64) * GOLDEN)


def mix64_array(z: np.ndarray) -> np.ndarray:
    """mix64 of every word of the uint64 array z (any shape), in place: returns z."""
    tmp = np.empty_like(z)
    np.right_shift(z, 30, out=tmp)
    z ^= tmp
    z *= _MIX1
    np.right_shift(z, 27, out=tmp)
    z ^= tmp
    z *= _MIX2
    np.right_shift(z, 31, out=tmp)
    z ^= tmp
    return z


def hash_array(state: np.ndarray, key: int, out: np.ndarray | None = None) -> np.ndarray:
    """splitmix64 outputs mix64(state + key) of the uint64 array `state` (it holds
    GOLDEN * counter); into out (the same shape) when given, else a new array."""
    return mix64_array(np.add(state, np.uint64(key), out=out))


def unit53(z: np.ndarray) -> np.ndarray:
    """Doubles in [0, 1) from the top 53 bits of the uint64 hashes z (exact)."""
    u = (z >> 11).astype(np.float64)
    u *= UNIT53
    return u


def unit24(z: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) from the top 24 bits of the uint64 hashes z (exact, so never 1)."""
    u = (z >> 40).astype(np.float32)
    u *= np.float32(UNIT24)
    return u


class Bijection:
    """A keyed permutation of [0, n): Feistel rounds on 2k bits (4^k >= n), each round's
    function the splitmix64 finalizer of (half, round key); values that land >= n are
    permuted again (cycle walking, < 4 rounds on average) until they fall inside. It costs
    no memory, and any part of it is computed alone (Criteo's shuffle of its rows)."""

    ROUNDS = 4

    def __init__(self, n: int, key: int) -> None:
        self.n = n
        bits = max(2, (max(n, 2) - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        k = mix64(key)
        self.keys = []
        for _ in range(self.ROUNDS):
            k = mix64(k + GOLDEN)
            self.keys.append(np.uint64(k))

    def _round(self, r: np.ndarray, key: np.uint64) -> np.ndarray:
        return mix64_array(r ^ key) & self.mask

    def _once(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << np.uint64(self.half)) | right

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """perm(x) for x (L,) int64 in [0, n): (L,) int64."""
        if self.n <= 1:
            return np.asarray(x, dtype=np.int64).copy()
        y = self._once(np.asarray(x, dtype=np.uint64))
        out = np.flatnonzero(y >= self.n)
        while out.size:
            y[out] = self._once(y[out])
            out = out[y[out] >= self.n]
        return y.astype(np.int64)
