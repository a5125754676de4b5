"""The item table's id -> row index (numpy open addressing on Python's str hash)."""

from __future__ import annotations

import random
import threading

import numpy as np

from online.id_index import IdIndex


class SameHash(str):
    """Ids that all collide, to drive the exact overflow path."""

    def __hash__(self) -> int:
        return 42


def test_rows_match_a_dict_through_growth() -> None:
    rng = random.Random(7)
    ix, ref = IdIndex(capacity=16), {}
    for batch in range(40):
        new = [f"item-{batch}-{j}" for j in range(rng.randint(0, 300))]
        for item, row in zip(new, ix.add(new).tolist(), strict=True):
            ref[item] = row
    assert sorted(ref.values()) == list(range(len(ref))) == list(range(len(ix)))  # dense rows
    probe = [*rng.sample(sorted(ref), 500), "absent", "", "item-0"]
    assert ix.rows(probe).tolist() == [ref.get(i, -1) for i in probe]
    assert set(ix) == set(ref) and "item-3-0" in ix and "nope" not in ix
    assert ix.get("absent") is None and ix.rows([]).shape == (0,)


def test_colliding_hashes_resolve_exactly() -> None:
    ix = IdIndex()
    a, b, c = SameHash("a"), SameHash("b"), SameHash("c")
    ix.add(["z", a])
    ix.add([b, "y", c])  # b and c collide with a stored id and with each other
    assert ix.rows([a, b, c, "z", "y", SameHash("never")]).tolist() == [1, 2, 4, 0, 3, -1]
    ix.add([f"fill{j}" for j in range(5000)])  # growth rebuilds: collisions stay exact
    assert ix.rows([c, a, b]).tolist() == [4, 1, 2]


def test_readers_during_writes_never_see_a_wrong_row() -> None:
    ix = IdIndex(capacity=8)
    ids = [f"i{j}" for j in range(20_000)]
    done = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        rng = np.random.default_rng(1)
        while not done.is_set():
            pick = [ids[j] for j in rng.integers(0, len(ids), 200)]
            for item, row in zip(pick, ix.rows(pick).tolist(), strict=True):
                if row != -1 and ids[row] != item:
                    errors.append(f"{item} -> {row}")

    t = threading.Thread(target=reader)
    t.start()
    for start in range(0, len(ids), 500):
        ix.add(ids[start:start + 500])
    done.set()
    t.join()
    assert not errors
    assert ix.rows(ids).tolist() == list(range(len(ids)))
