from __future__ import annotations

import math

from node.rows.exphist import bucket_bound, cumulative_buckets


def test_bucket_bounds() -> None:
    assert bucket_bound(0, 3) == 8.0
    assert bucket_bound(0, -1) == 0.5
    assert bucket_bound(-1, 1) == 4.0  # base 4
    assert bucket_bound(2, 4) == 2.0  # base 2^(1/4)
    assert bucket_bound(1, 1) == math.sqrt(2)
    assert bucket_bound(0, 5000) == math.inf
    assert bucket_bound(0, -5000) == 0.0


def test_cumulative_buckets_negative_zero_positive() -> None:
    assert cumulative_buckets(0, 1, 0.0, 0, [1, 2, 3], 0, [4]) == [
        (-1.0, 4),
        (0.0, 5),
        (2.0, 6),
        (4.0, 8),
        (8.0, 11),
    ]


def test_negative_buckets_go_from_most_negative() -> None:
    # negative bucket 1 holds [-4, -2), bucket 2 holds [-8, -4)
    assert cumulative_buckets(0, 0, 0.0, 0, [], 1, [5, 7]) == [(-4.0, 7), (-2.0, 12)]


def test_zero_threshold_and_offsets() -> None:
    assert cumulative_buckets(0, 2, 0.25, -2, [1, 1], 0, []) == [(0.25, 2), (0.5, 3), (1.0, 4)]


def test_overflowing_bound_is_left_to_inf() -> None:
    assert cumulative_buckets(0, 0, 0.0, 1022, [1, 1, 1], 0, []) == [(2.0**1023, 1)]
