"""gRPC's I/O engine for our processes, chosen before gRPC loads.

gRPC 1.85 reads ``GRPC_EXPERIMENTS`` once, when its library initialises (``import grpc``); set
later, it is ignored. ``apply()`` runs at the top of the ``recsys`` CLI, before any subcommand
imports gRPC, and sets it unless the operator already did (an explicit value, even empty, is
kept); the scorer workers, the echo baseline and the load generator it starts inherit it.

What it selects: gRPC's older epoll-based I/O manager instead of the EventEngine for
listeners, client channels and other endpoints. On a small server the EventEngine hands every
read and write completion to a thread of its own pool, which then wakes the thread that polls
the completion queue, which wakes the asyncio loop: with HTTP/2 BDP pings off as well
(``online.server.GRPC_OPTIONS``), a bare echo call cost the server 7.9 context switches instead
of 17.8, and 0.57 instead of 0.67 ms of CPU; the load generator 2.7 instead of 7.4 switches
(BENCHMARKS.md, "fifth session"). Where a later gRPC no longer knows these experiments, it logs
"Unknown experiment" once at start and runs as it would have anyway.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "GRPC_EXPERIMENTS"
EPOLL_IO = "-event_engine_listener,-event_engine_client,-event_engine_for_all_other_endpoints"


def apply(environ: dict[str, str] | None = None) -> str | None:
    """Set ``GRPC_EXPERIMENTS`` to ``EPOLL_IO`` unless it is set; returns the value in force,
    or None where gRPC already loaded in this process (too late to choose: nothing set)."""
    env = os.environ if environ is None else environ
    if environ is None and "grpc" in sys.modules and VARIABLE not in env:
        return None
    return env.setdefault(VARIABLE, EPOLL_IO)


def describe(environ: dict[str, str] | None = None) -> str:
    """For start-up lines: which I/O engine this process's gRPC was told to use."""
    value = (os.environ if environ is None else environ).get(VARIABLE, "")
    if value == EPOLL_IO:
        return "epoll I/O manager"
    return f"{VARIABLE}={value}" if value else "gRPC defaults (EventEngine)"
