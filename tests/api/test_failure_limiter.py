"""The API's failed-authentication limiter: it refuses an address past its limit, and its
table stays bounded however many addresses call (found by the soak's memory tracing:
every authenticated call used to add an entry for its address, kept forever)."""

from __future__ import annotations

import time

import pytest

from approvals_app.auth import MAX_FAILING_CLIENTS, FailureLimiter
from custody.errors import RateLimited


def test_refuses_an_address_past_its_limit_only() -> None:
    limiter = FailureLimiter(limit=3)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failed("10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("10.0.0.1")
    limiter.check("10.0.0.2")  # another address is not held back


def test_callers_that_never_fail_are_not_remembered() -> None:
    limiter = FailureLimiter()
    for i in range(10_000):
        limiter.check(f"2001:db8::{i:x}")
    assert len(limiter) == 0


def test_idle_failing_addresses_are_forgotten() -> None:
    limiter = FailureLimiter(window=0.05)
    for i in range(MAX_FAILING_CLIENTS):
        limiter.failed(f"2001:db8::{i:x}")
    time.sleep(0.1)  # all of them idle now
    for i in range(1_000):
        limiter.failed(f"2001:db8:1::{i:x}")
    assert len(limiter) <= 1_000
