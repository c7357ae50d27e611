"""Retry a flaky operation with exponential backoff and jitter."""

import random
import time


def retry_with_backoff(operation, attempts=5, base_delay=0.1, max_delay=5.0):
    """Call `operation` until it succeeds, sleeping longer after each failure.

    The delay doubles after every failed attempt (exponential backoff), is capped at
    `max_delay`, and gets random jitter so that many clients do not retry in lockstep.
    """
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, max_delay)
