"""A/B analysis from the real logs: ``recsys ab report``.

Reads the ``impressions`` and ``training-examples`` topics from the beginning to their current
end and prints per arm: users, requests, impressions (one per served item), CTR, add-to-cart
rate, CVR (purchases / clicks) and revenue per 1,000 impressions, each with a 95% interval
clustered by user (delta method, ``models.ab_stats``), and the lift of each arm over the
control. Degraded requests are counted apart and left out of the rates; rates are over the
impressions the label join has labelled. ``--json`` prints the whole report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:
    from rich.table import Table

HELP = "A/B report from the impressions and training-examples topics (report [--json])"

# metric, column label, unit
COLUMNS = (("ctr", "CTR", "%"), ("cart_rate", "cart rate", "%"), ("cvr", "CVR", "%"),
           ("revenue_per_mille", "rev / 1k imp", ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["report"], help="report: per-arm metrics and lifts")
    p.add_argument("--control", default=None, help="the arm lifts are measured against "
                   "(default: the first of ab_arms)")
    p.add_argument("--experiment", default=None, help="only requests of this experiment "
                   "(default: ab_experiment; '*' for any)")
    p.add_argument("--since-ms", type=int, default=0, help="only requests served at or after "
                   "this event time (ms since the epoch)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to read each topic to its end")


def read_topic(settings: Settings, name: str, timeout_s: float) -> Iterator[bytes]:
    """Every value of one topic from the beginning to its end as of the call (partitions
    assigned directly: no consumer group to join). TimeoutError if the end is not reached."""
    import uuid

    from core import kafka

    topic = settings.topic(name)
    c = kafka.consumer(settings, group=f"ab-report-{uuid.uuid4().hex[:8]}")
    try:
        marks = kafka.watermarks(c, topic)
        start = {p: low for p, (low, _high) in marks.items()}
        ends = {p: high for p, (_low, high) in marks.items()}
        for _part, _offset, value in kafka.read_range(c, topic, start, ends, timeout_s, strict=True):
            if value is not None:
                yield value
    finally:
        c.close()


def build_report(settings: Settings, control: str | None = None, experiment: str | None = None,
                 since_ms: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
    from models.ab_stats import ABLog, report

    exp = settings.ab_experiment if experiment is None else (None if experiment == "*" else experiment)
    log = ABLog(experiment=exp, since_ms=since_ms)
    # examples first: every example read then has its impression in the impressions read after
    # (the label join emits an example only once its impression has arrived)
    sources: tuple[tuple[str, Callable[[bytes], None]], ...] = (
        ("training", log.add_example), ("impressions", log.add_impression))
    for name, add in sources:
        for value in read_topic(settings, name, timeout_s):
            add(value)
    out = report(log, control or settings.ab_arms[0], settings.ab_arms, settings.ab_weights)
    out["topics"] = {"impressions": settings.topic("impressions"), "training": settings.topic("training")}
    return out


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def _cell(est: dict[str, Any], unit: str) -> str:
    """``value [lo, hi]``."""
    fmt = _pct if unit == "%" else _num
    ci = est.get("ci95")
    return fmt(est.get("value")) + ("" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]")


def _lift_cell(est: dict[str, Any] | None) -> str:
    if est is None or est.get("value") is None:
        return "—"
    ci = est.get("ci95")
    sign = lambda v: f"{100 * v:+.1f}%"  # noqa: E731
    return sign(est["value"]) + ("" if ci is None else f" [{sign(ci[0])}, {sign(ci[1])}]")


def tables(rep: dict[str, Any]) -> tuple[Table, Table]:
    """The people's view: per-arm counts and metrics; lifts over the control."""
    from rich import box
    from rich.table import Table

    main = Table(box=box.SIMPLE_HEAD, title=f"A/B report: experiment {rep['experiment'] or '*'}",
                 title_justify="left", title_style="bold")
    for col in ("arm", "users", "share (cfg)", "requests", "impressions", "labelled", "degraded"):
        main.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    for _key, label, _unit in COLUMNS:
        main.add_column(f"{label} [95% CI]", justify="right", no_wrap=True)
    lifts = Table(box=box.SIMPLE_HEAD, title=f"lift over {rep['control']}", title_justify="left",
                  title_style="bold")
    lifts.add_column("arm", no_wrap=True)
    for _key, label, _unit in COLUMNS:
        lifts.add_column(f"{label} [95% CI]", justify="right", no_wrap=True)
    for arm, a in rep["arms"].items():
        share = "—" if a["user_share"] is None else f"{100 * a['user_share']:.1f}%"
        if a["expected_share"] is not None:
            share += f" ({100 * a['expected_share']:.1f}%)"
        main.add_row(arm, str(a["users"]), share, str(a["requests"]), str(a["impressions"]),
                     str(a["labelled_impressions"]),
                     f"{a['degraded_requests']} req / {a['degraded_impressions']} imp",
                     *(_cell(a["metrics"][k], unit) for k, _l, unit in COLUMNS))
        if a["lift"] is not None:
            lifts.add_row(arm, *(_lift_cell(a["lift"][k]) for k, _l, _u in COLUMNS))
    return main, lifts


NOTES = ("impressions: items served in requests that were not degraded (one per item); labelled: "
         "those the label join has emitted examples for, the denominator of CTR, cart rate and "
         "rev / 1k imp; CVR = purchases / clicks; revenue = purchases x logged price. "
         "95% CIs clustered by user (delta method); degraded requests are left out of the rates.")


def print_tables(rep: dict[str, Any]) -> None:
    from rich.console import Console

    from core.terminal import isatty

    con = Console(file=sys.stdout, width=None if isatty(sys.stdout) else 200)
    main, lifts = tables(rep)
    con.print(main)
    if not rep["control_found"]:
        con.print(f"control arm {rep['control']!r} has no labelled data: no lifts")
    elif lifts.row_count:
        con.print(lifts)
    extra = {k: rep[k] for k in ("examples", "skipped_requests", "users_in_several_arms") if rep[k]}
    orphans = sum(a["orphan_examples"] for a in rep["arms"].values())
    unpriced = sum(a["unpriced_purchases"] for a in rep["arms"].values())
    unlabelled = sum(a["unlabelled_impressions"] for a in rep["arms"].values())
    for key, n in (("orphan_examples", orphans), ("unpriced_purchases", unpriced),
                   ("unlabelled_impressions", unlabelled)):
        if n:
            extra[key] = n
    con.print(NOTES, soft_wrap=False, markup=False, highlight=False)
    con.print("  ".join(f"{k} {v}" for k, v in extra.items()), markup=False, highlight=False)


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        rep = build_report(settings, control=args.control, experiment=args.experiment,
                           since_ms=args.since_ms, timeout_s=args.timeout)
    except TimeoutError as exc:
        print(f"recsys ab: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_tables(rep)
    return 0
