"""Delivery outcomes and the retry schedule. Pure.

At-least-once: a failed try is tried again after an exponential backoff with
jitter, up to a bounded number of tries; a permanent refusal (a 4xx other
than 408/425/429, a push subscription that is gone) ends at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivered:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NotDelivered:
    error: str
    permanent: bool = False


Outcome = Delivered | NotDelivered

RETRYABLE_STATUS = frozenset({408, 425, 429})


def outcome_of_status(status: int, what: str) -> Outcome:
    if 200 <= status < 300:
        return Delivered(f"{what} answered {status}")
    permanent = 400 <= status < 500 and status not in RETRYABLE_STATUS
    return NotDelivered(f"{what} answered HTTP {status}", permanent=permanent)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base: float = 1.0  # seconds before the 2nd try (on average 3/4 of it, with jitter)
    cap: float = 600.0

    def delay(self, failed_attempt: int, rand: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait after try number ``failed_attempt`` failed; None when out of tries.

        "Equal jitter": half the exponential step is fixed and half random, so retries of
        many deliveries spread out but none comes back sooner than half its step.
        """
        if failed_attempt >= self.max_attempts:
            return None
        step = min(self.cap, self.base * 2.0 ** (failed_attempt - 1))
        return step / 2 + rand() * step / 2
