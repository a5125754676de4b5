"""Co-visitation: an item's related items, as log2 forward-decayed co-visit weights."""

from __future__ import annotations

from collections.abc import Iterable

from features.decay import decay_add


def update_covisit(
    related: dict[str, float] | None,
    visits: Iterable[tuple[str, float, int]],
    half_life_s: float,
    max_items: int,
) -> dict[str, float]:
    """Add weighted co-visits ``(other item, weight, event time ms)``, in order, to an item's
    related-items map (log2 forward-decayed scores), keeping at most ``max_items`` (pruned in
    bulk at 2x to amortise, deterministic). Updates ``related`` in place (it is this key's
    private state) and returns it."""
    out = related if related is not None else {}
    bound = 2 * max_items
    for other, weight, ts_ms in visits:
        out[other] = decay_add(out.get(other), ts_ms, half_life_s, weight)
        if len(out) > bound:
            out = dict(top_items(out, max_items))
    return out


def top_items(scores: dict[str, float], n: int) -> list[tuple[str, float]]:
    """Top ``n`` by score, ties broken by id (deterministic)."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
