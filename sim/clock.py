"""Simulated time: a clock that runs ``speed`` times faster than wall time, or a virtual one.

Every simulated event carries its SIM time as ``event_time_ms``, so delayed purchases (hours to
days) and daily cycles play out in minutes of wall time.

Where sim time sits relative to wall time (``plan_start``): the stream dataflows reject events
more than ``max_event_skew_s`` (3 days) in the future, and a fast clock started at "now" runs
ahead of wall time by ``(speed - 1) * elapsed``. So a run of known length starts in the past,
at ``end - speed * duration``, where ``end`` is wall "now" or, by default (the world's
``run.end_hour_utc``), the last past occurrence of a fixed UTC hour: sim time is never in the
future, whatever the speed, and a seed's run covers the same sim hours of the day whenever it
is started. An open-ended run (no duration) starts at "now" and runs ahead;
``skew_horizon_s`` says after how many wall seconds its events start to be dead-lettered.
At speed 1 (or less) the clock starts at "now": sim time is wall time, which is what the label
join needs while the scorer stamps impressions with wall time (see sim/simulator.py).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    speed: float
    start_ms: int

    def now_ms(self) -> int: ...

    def wall_elapsed_s(self) -> float: ...

    def wait_until(self, sim_ms: int, stop: threading.Event, max_wall_s: float = 0.05) -> bool:
        """Wait (at most ``max_wall_s`` of wall time) for ``sim_ms``; True once it is reached."""
        ...


class SimClock:
    """Real time, scaled: ``sim = start + speed * (wall - wall_at_start)``."""

    def __init__(self, speed: float, start_ms: int | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self.start_ms = int(time.time() * 1000) if start_ms is None else int(start_ms)
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._t0) * 1000.0 * self.speed)

    def wall_elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    def wall_s_until(self, sim_ms: int) -> float:
        return (sim_ms - self.now_ms()) / 1000.0 / self.speed

    def wait_until(self, sim_ms: int, stop: threading.Event, max_wall_s: float = 0.05) -> bool:
        delay = self.wall_s_until(sim_ms)
        if delay <= 0:
            return True
        stop.wait(min(delay, max_wall_s))
        return self.now_ms() >= sim_ms


class VirtualClock:
    """Discrete-event time for tests and offline runs: waiting jumps straight to the target."""

    def __init__(self, start_ms: int, speed: float = 1.0) -> None:
        self.speed = float(speed)
        self.start_ms = int(start_ms)
        self._now = int(start_ms)

    def now_ms(self) -> int:
        return self._now

    def wall_elapsed_s(self) -> float:
        return (self._now - self.start_ms) / 1000.0 / self.speed

    def wait_until(self, sim_ms: int, stop: threading.Event, max_wall_s: float = 0.05) -> bool:
        self._now = max(self._now, int(sim_ms))
        return True


def plan_start(duration_s: float, speed: float, wall_ms: int | None = None,
               end_hour_utc: float = -1.0) -> int:
    """The sim start time for a run of ``duration_s`` wall seconds: it ends at wall "now", or,
    with ``end_hour_utc`` >= 0, at the latest time at or before now whose UTC time of day is
    that hour (at most a day earlier), so the run's sim hours of the day, and with them the
    simulator's diurnal arrival rates, do not depend on when it is started."""
    now = int(time.time() * 1000) if wall_ms is None else wall_ms
    if duration_s <= 0 or speed <= 1:
        return now  # speed <= 1 never runs ahead: real time stays real (sim time = wall time)
    end = now
    if end_hour_utc >= 0:
        day_ms, at = 86_400_000, int(end_hour_utc * 3_600_000)
        end = now - (now - at) % day_ms
    return end - int(speed * duration_s * 1000)


def skew_horizon_s(speed: float, start_ms: int, max_skew_s: float, wall_ms: int | None = None) -> float:
    """Wall seconds until a clock started now at ``start_ms`` passes wall time + ``max_skew_s``."""
    now = int(time.time() * 1000) if wall_ms is None else wall_ms
    if speed <= 1:
        return float("inf")
    return (max_skew_s * 1000 + now - start_ms) / 1000.0 / (speed - 1)
