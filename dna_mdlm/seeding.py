"""Derived seeds: one random stream per unit of work (a window, a variant site, a generated sequence).

A stream seeded by `derived_seed(seed, *key)` depends on the user's seed and on the unit's own name only, so a
result does not change with the batch size, the order of the input or the other items in it (the scheme
score-variants, likelihood and sample share)."""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, *key) -> int:
    """A 63-bit seed, a pure function of (seed, key...): SHA-256 of `seed|k1|k2|...`, first 8 bytes."""
    digest = hashlib.sha256("|".join(str(part) for part in (seed, *key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
