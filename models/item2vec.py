"""Incremental item2vec: skip-gram with negative sampling (SGNS) over session item sequences.

Built to be updated online, in small batches of sessions, as the embeddings dataflow sees
them (numpy, single-threaded, deterministic for a fixed seed and input order):

* **Vocabulary grows**: an item gets a slot the first time it appears (arrays grow by
  doubling). Cold start: a new item's input vector starts at the mean of the known items
  it co-occurs with in that session (else small random), so it is usable at once and
  refined by later sessions.
* **Negative sampling** draws from a unigram^0.75 table that is updated incrementally
  (Kaji & Kobayashi, "Incremental Skip-gram Model with Negative Sampling", EMNLP 2017):
  when the total weight F grows by dF, a random dF/F fraction of the table's slots is
  overwritten with items drawn in proportion to their weight increase, which keeps every
  item's share of the table equal, in expectation, to count^0.75 / sum(count^0.75).
* **Frequent-item subsampling** (word2vec's rule) with the running counts.
* **Row-wise AdaGrad** (one accumulator per embedding row): a per-item step size that
  shrinks as the item is seen more, so the model needs no global learning-rate schedule,
  which an unbounded stream does not have.

``vectors()`` returns L2-normalised float32 input vectors, ready for ``EmbeddingStore``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Item2VecConfig:
    dim: int = 64
    window: int = 5  # max distance of a context item; the effective window is uniform 1..window
    negatives: int = 5
    lr: float = 0.2  # AdaGrad base step
    subsample: float = 1e-3  # word2vec's t; 0 disables
    power: float = 0.75
    table_size: int = 1 << 20
    batch_pairs: int = 2048
    seed: int = 7

    def __post_init__(self) -> None:
        if min(self.dim, self.window, self.negatives, self.table_size, self.batch_pairs) <= 0:
            raise ValueError(f"item2vec config values must be > 0: {self}")


@dataclass
class FitStats:
    pairs: int = 0
    loss: float = float("nan")  # mean SGNS loss per pair over this call
    new_items: int = 0
    touched: list[str] = field(default_factory=list)  # items whose vectors may have changed


class UnigramTable:
    """Negative-sampling table whose slots follow count^power, updated incrementally."""

    def __init__(self, size: int, power: float, rng: np.random.Generator) -> None:
        self.size = size
        self.power = power
        self.rng = rng
        self.table = np.zeros(size, dtype=np.int64)
        self.total = 0.0  # F = sum(count^power)

    def update(self, idx: IntArray, old: IntArray, new: IntArray) -> None:
        """Items ``idx`` went from counts ``old`` to ``new``."""
        gain = new.astype(np.float64) ** self.power - old.astype(np.float64) ** self.power
        d_total = float(gain.sum())
        if d_total <= 0.0:
            return
        new_total = self.total + d_total
        frac = d_total / new_total
        n = int(np.floor(self.size * frac + self.rng.random()))  # stochastic rounding
        n = min(n, self.size)
        if n:
            slots = self.rng.choice(self.size, n, replace=False) if n < self.size else None
            values = self.rng.choice(idx, n, p=gain / d_total)
            if slots is None:
                self.table[:] = values
            else:
                self.table[slots] = values
        self.total = new_total

    def sample(self, shape: tuple[int, ...]) -> IntArray:
        if self.total <= 0.0:
            raise RuntimeError("unigram table is empty: no items counted yet")
        return self.table[self.rng.integers(0, self.size, size=shape)]


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float32)


def _flatten(sessions: list[IntArray]) -> tuple[IntArray, IntArray]:
    """Concatenated tokens and the session number of each token."""
    if not sessions:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    tokens = np.concatenate(sessions)
    sess = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
    return tokens, sess


def skipgram_pairs(
    tokens: IntArray, sess: IntArray, window: int, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """(center, context) pairs within each session, word2vec's dynamic window (each center
    draws its window b in 1..window), self-pairs (repeated views) dropped."""
    reach = np.asarray(rng.integers(1, window + 1, size=tokens.shape[0]), dtype=np.int64)
    centers: list[IntArray] = []
    contexts: list[IntArray] = []
    for d in range(1, window + 1):
        same = sess[:-d] == sess[d:]
        left, right = np.flatnonzero(same), np.flatnonzero(same) + d
        fwd = left[reach[left] >= d]  # center left, context d to the right
        bwd = right[reach[right] >= d]  # center right, context d to the left
        centers += [tokens[fwd], tokens[bwd]]
        contexts += [tokens[fwd + d], tokens[bwd - d]]
    c, o = np.concatenate(centers), np.concatenate(contexts)
    keep = c != o
    return c[keep], o[keep]


def _row_adagrad(
    w: FloatArray, acc: FloatArray, rows: IntArray, grads: FloatArray, lr: float
) -> None:
    """Sum gradients per row, then one AdaGrad step per distinct row."""
    uniq, inv = np.unique(rows, return_inverse=True)
    total = np.zeros((uniq.shape[0], w.shape[1]), dtype=np.float32)
    np.add.at(total, inv, grads)
    acc[uniq] += np.mean(total * total, axis=1)
    w[uniq] -= (lr / np.sqrt(acc[uniq] + 1e-8))[:, None] * total


class Item2Vec:
    """Online SGNS item embeddings; see the module docstring."""

    def __init__(self, config: Item2VecConfig | None = None) -> None:
        self.config = config or Item2VecConfig()
        self.rng = np.random.default_rng(self.config.seed)
        self.items: list[str] = []
        self.index: dict[str, int] = {}
        cap, d = 1024, self.config.dim
        self.counts = np.zeros(cap, dtype=np.int64)
        self.w_in = np.zeros((cap, d), dtype=np.float32)
        self.w_out = np.zeros((cap, d), dtype=np.float32)
        self.acc_in = np.zeros(cap, dtype=np.float32)
        self.acc_out = np.zeros(cap, dtype=np.float32)
        self.table = UnigramTable(self.config.table_size, self.config.power, self.rng)

    def __len__(self) -> int:
        return len(self.items)

    # --- vocabulary -----------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self.counts.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        self.counts = np.resize(self.counts, new_cap)
        self.counts[cap:] = 0
        for name in ("w_in", "w_out"):
            old = getattr(self, name)
            grown = np.zeros((new_cap, old.shape[1]), dtype=np.float32)
            grown[:cap] = old
            setattr(self, name, grown)
        for name in ("acc_in", "acc_out"):
            grown_acc = np.zeros(new_cap, dtype=np.float32)
            grown_acc[:cap] = getattr(self, name)
            setattr(self, name, grown_acc)

    def _encode(self, sessions: Iterable[Sequence[str]]) -> tuple[list[IntArray], int]:
        """Sessions as index arrays; unseen items get slots (cold-start initialised)."""
        encoded: list[IntArray] = []
        first_new = len(self.items)
        for session in sessions:
            fresh: list[int] = []
            idx = np.empty(len(session), dtype=np.int64)
            for pos, item in enumerate(session):
                slot = self.index.get(item)
                if slot is None:
                    slot = len(self.items)
                    self.index[item] = slot
                    self.items.append(item)
                    fresh.append(slot)
                idx[pos] = slot
            if fresh:
                self._init_new(fresh, idx[idx < first_new])
            if len(idx) >= 2:
                encoded.append(idx)
        return encoded, len(self.items) - first_new

    def _init_new(self, fresh: list[int], known: IntArray) -> None:
        self._grow(len(self.items))
        d = self.config.dim
        noise = (self.rng.random((len(fresh), d), dtype=np.float32) - 0.5) / d
        if known.size:
            noise += self.w_in[known].mean(axis=0)
        self.w_in[fresh] = noise

    # --- training -------------------------------------------------------------------------
    def _count(self, tokens: IntArray) -> None:
        idx, n = np.unique(tokens, return_counts=True)
        old = self.counts[idx].copy()
        self.counts[idx] += n
        self.table.update(idx, old, self.counts[idx])

    def _subsample(self, tokens: IntArray, sess: IntArray) -> tuple[IntArray, IntArray]:
        t = self.config.subsample
        if t <= 0.0 or tokens.size == 0:
            return tokens, sess
        freq = self.counts[tokens] / float(self.counts.sum())
        keep_p = np.minimum(1.0, np.sqrt(t / freq) + t / freq)
        keep = self.rng.random(tokens.shape[0]) < keep_p
        return tokens[keep], sess[keep]

    def partial_fit(self, sessions: Iterable[Sequence[str]]) -> FitStats:
        """One online update with a batch of sessions (each a sequence of item ids)."""
        encoded, n_new = self._encode(sessions)
        tokens, sess = _flatten(encoded)
        stats = FitStats(new_items=n_new)
        if tokens.size == 0:
            return stats
        self._count(tokens)
        centers, contexts = skipgram_pairs(*self._subsample(tokens, sess),
                                           self.config.window, self.rng)
        order = self.rng.permutation(centers.shape[0])
        centers, contexts = centers[order], contexts[order]
        losses = []
        step = self.config.batch_pairs
        for start in range(0, centers.shape[0], step):
            losses.append(self._step(centers[start : start + step],
                                     contexts[start : start + step]))
        stats.pairs = int(centers.shape[0])
        if losses:
            stats.loss = float(np.sum(losses) / stats.pairs)
        stats.touched = [self.items[i] for i in np.unique(tokens).tolist()]
        return stats

    def _step(self, c: IntArray, o: IntArray) -> float:
        """One SGNS minibatch; returns the summed loss."""
        neg = self.table.sample((c.shape[0], self.config.negatives))
        vc, uo, un = self.w_in[c], self.w_out[o], self.w_out[neg]
        s_pos = np.einsum("bd,bd->b", vc, uo)
        s_neg = np.einsum("bkd,bd->bk", un, vc)
        p_pos, p_neg = _sigmoid(s_pos), _sigmoid(s_neg)
        g_pos, g_neg = p_pos - 1.0, p_neg  # d loss / d score
        grad_c = g_pos[:, None] * uo + np.einsum("bk,bkd->bd", g_neg, un)
        grad_o = g_pos[:, None] * vc
        grad_n = g_neg[:, :, None] * vc[:, None, :]
        lr = self.config.lr
        _row_adagrad(self.w_in, self.acc_in, c, grad_c, lr)
        rows = np.concatenate([o, neg.reshape(-1)])
        grads = np.concatenate([grad_o, grad_n.reshape(-1, vc.shape[1])])
        _row_adagrad(self.w_out, self.acc_out, rows, grads, lr)
        eps = 1e-7
        return float(-np.log(p_pos + eps).sum() - np.log(1.0 - p_neg + eps).sum())

    # --- export ---------------------------------------------------------------------------
    def vectors(self, items: Sequence[str] | None = None) -> tuple[list[str], FloatArray]:
        """(ids, L2-normalised float32 vectors) for ``items`` (default: every item)."""
        ids = list(self.items) if items is None else [i for i in items if i in self.index]
        rows = np.array([self.index[i] for i in ids], dtype=np.int64)
        w = self.w_in[rows] if rows.size else np.zeros((0, self.config.dim), np.float32)
        norms = np.linalg.norm(w, axis=1, keepdims=True)
        return ids, np.asarray(w / np.maximum(norms, 1e-12), dtype=np.float32)

    def vector(self, item: str) -> FloatArray | None:
        if item not in self.index:
            return None
        return self.vectors([item])[1][0]
