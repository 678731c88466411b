"""``Clock.created_at``: the cached strings are exactly ``rfc3339`` of the time they stand for."""

from __future__ import annotations

import pytest

from proxy.clock import Clock
from proxy.translate.common import rfc3339

BASE = 1_795_801_522_123_456_789  # 2026-11-28T...


@pytest.mark.parametrize(
    "steps_ns",
    [
        pytest.param([0, 1, 999_999], id="within-one-millisecond"),
        pytest.param([0, 1_000_000, 2_500_000], id="new-milliseconds"),
        pytest.param([0, 876_543_211, 876_543_211 + 1_000_000_000], id="into-the-next-seconds"),
        pytest.param([0, 86_400 * 10**9], id="the-next-day"),
    ],
)
def test_created_at_is_rfc3339_to_the_millisecond(steps_ns: list[int]) -> None:
    now = [BASE]
    clock = Clock(lambda: now[0])
    for step in steps_ns:
        now[0] = BASE + step
        first_of_its_ms = now[0] - now[0] % 1_000_000
        text = clock.created_at()
        assert text in (rfc3339(now[0]), rfc3339(max(first_of_its_ms, BASE)))
        assert text[:23] == rfc3339(now[0])[:23]  # the same millisecond


def test_a_new_millisecond_gives_a_new_string_and_the_same_one_is_reused() -> None:
    now = [BASE]
    clock = Clock(lambda: now[0])
    first = clock.created_at()
    now[0] += 10
    assert clock.created_at() is first
    now[0] += 1_000_000
    assert clock.created_at() == rfc3339(now[0])
