"""Transparent huge pages for a process's heap, through glibc's malloc.

The scorer's request path reads a few thousand scattered places in large structures: the HNSW
graph and vectors (~400 MB at 1M items), the item table's columns and the id index. With 4 KB
pages nearly every such read also misses the TLB, and where THP is in ``madvise`` mode (the
common default) nothing asks for huge pages. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35) makes malloc ``madvise(MADV_HUGEPAGE)`` the memory it maps, so these structures
land on 2 MB pages. Tunables are read when a process starts: ``reexec_with_huge_pages``
restarts the current command once with it set (children inherit it). Measured on the 1M-item
bench state, in-process Recommend loop, 6 alternating process pairs: 0.3-1.3 ms less CPU per
request in every pair, about 12% (BENCHMARKS.md).

Where the tunable is unknown (older glibc, musl) or THP is off (``never``) it changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The kernel's THP mode (always / madvise / never), None where unknown."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1: end] if 0 <= start < end else None


def _hugetlb_setting() -> str | None:
    """The value this process was started with for ``glibc.malloc.hugetlb``, None if unset."""
    name = TUNABLE.split("=")[0]
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        key, _, value = item.partition("=")
        if key == name:
            return value
    return None


def active() -> bool:
    """Whether this process was started with malloc on huge pages (hugetlb 1, or 2: hugetlbfs)."""
    return _hugetlb_setting() in ("1", "2")


def reexec_with_huge_pages(module: str, args: list[str]) -> None:
    """Replace this process with ``python -m module *args`` under the tunable, unless it is
    already set (to any value: an operator's explicit choice stands), this is not Linux, or THP
    is off or unknown. Returns only when it does not re-exec."""
    if sys.platform != "linux" or not sys.executable or _hugetlb_setting() is not None \
            or thp_mode() not in ("always", "madvise"):
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=":".join(x for x in (current, TUNABLE) if x))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *args], env)
    except OSError as exc:  # an optimisation: go on as this process is
        log.warning("could not restart with malloc on huge pages (%s); going on without", exc)
