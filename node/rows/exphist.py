"""Exponential histogram buckets as cumulative explicit `le` buckets.

With base = 2^(2^-scale), positive bucket `i` holds (base^i, base^(i+1)], negative bucket `i`
holds [-base^(i+1), -base^i), the zero bucket holds [-zero_threshold, zero_threshold]. Walking
from the most negative bucket to the most positive one and summing counts gives classic buckets:

    negative buckets, highest index first   le = -base^i
    zero bucket (when zero_count > 0)       le = zero_threshold
    positive buckets, lowest index first    le = base^(i+1)
    (+Inf, count) is added by the caller

A bound that overflows a double is left out: the "+Inf" bucket counts those values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def bucket_bound(scale: int, index: int) -> float:
    """base^index for base = 2^(2^-scale); +inf when it overflows, 0.0 when it underflows."""
    try:
        if scale <= 0:
            return math.ldexp(1.0, index << -scale)
        return math.exp2(index / (1 << scale))
    except OverflowError:
        return math.inf


def cumulative_buckets(
    scale: int,
    zero_count: int,
    zero_threshold: float,
    positive_offset: int,
    positive_counts: Sequence[int],
    negative_offset: int,
    negative_counts: Sequence[int],
) -> list[tuple[float, int]]:
    """[(upper bound, cumulative count)] in increasing bound order, without the +Inf bucket."""
    out: list[tuple[float, int]] = []
    total = 0
    for k in range(len(negative_counts) - 1, -1, -1):
        total += negative_counts[k]
        bound = -bucket_bound(scale, negative_offset + k)
        if not math.isinf(bound):
            out.append((bound, total))
    if zero_count:
        total += zero_count
        out.append((zero_threshold, total))
    for k, count in enumerate(positive_counts):
        total += count
        bound = bucket_bound(scale, positive_offset + k + 1)
        if not math.isinf(bound):
            out.append((bound, total))
    return out
