"""Bounded polling for GPU state that settles after boot (NVLink fabric, MIG instances).

The result says how long the wait really took, so a report never claims "after 60s" for a
state that was already final at the first read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Polled(Generic[T]):
    value: T  # the last value read
    waited_s: float  # from the first read to the last
    timed_out: bool  # still pending when the time was up
    reads: int


def poll(
    read: Callable[[], T],
    pending: Callable[[T], bool],
    timeout_s: float,
    *,
    interval_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Polled[T]:
    """Read until `pending(value)` is false or `timeout_s` has passed; never sleeps past it."""
    started = clock()
    value, reads = read(), 1
    while pending(value):
        left = timeout_s - (clock() - started)
        if left <= 0:
            return Polled(value, clock() - started, True, reads)
        sleep(min(interval_s, left))
        value, reads = read(), reads + 1
    return Polled(value, clock() - started, False, reads)
