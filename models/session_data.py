"""Session datasets in the SR-GNN format, read in place (never copied into the repo).

A dataset folder holds

* ``train_sessions.txt.gz`` - one session per line, space-separated item ids (1-based), oldest
  session first (time order);
* ``test_prefix_label.tsv.gz`` - header ``prefix<TAB>label``, then one test case per line: a
  session prefix (space-separated ids, oldest first) and the item that came next.

Training examples are every ``(prefix, next item)`` of each training session, as SR-GNN does
(sequence augmentation). Prefixes are stored right-aligned in a fixed-width int64 matrix: the
last column is the most recent item, 0 is padding (item ids start at 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.terminal import open_text

TRAIN_FILE = "train_sessions.txt.gz"
TEST_FILE = "test_prefix_label.tsv.gz"
PAD = 0

IntArray = npt.NDArray[np.int64]


class DatasetError(ValueError):
    """The dataset path is missing, incomplete or malformed."""


@dataclasses.dataclass(frozen=True)
class Examples:
    """``prefix[i]`` (right-aligned, 0-padded, at most ``max_len`` recent items) -> ``label[i]``."""

    prefix: IntArray  # [N, max_len]
    label: IntArray  # [N]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, idx: npt.NDArray[np.integer] | slice) -> Examples:
        return Examples(self.prefix[idx], self.label[idx])


@dataclasses.dataclass(frozen=True)
class SessionDataset:
    name: str
    train_sessions: list[IntArray]  # time order
    test_prefixes: list[IntArray]
    test_labels: IntArray
    n_items: int  # embedding rows: max item id + 1 (row 0 is padding)

    def summary(self) -> dict[str, int | str]:
        return {
            "dataset": self.name,
            "train_sessions": len(self.train_sessions),
            "test_cases": len(self.test_prefixes),
            "n_items": self.n_items - 1,
        }


def dataset_files(path: str | Path) -> tuple[Path, Path]:
    """The train and test files of a dataset folder, or a clear error naming what is missing."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a folder (expected {TRAIN_FILE} in it)")
    train, test = root / TRAIN_FILE, root / TEST_FILE
    missing = [p.name for p in (train, test) if not p.is_file()]
    if missing:
        raise DatasetError(f"dataset folder {root} lacks {', '.join(missing)}")
    return train, test


def _parse_ids(text: str, where: str) -> IntArray:
    try:
        ids = np.array([int(x) for x in text.split()], dtype=np.int64)
    except ValueError as exc:
        raise DatasetError(f"{where}: item ids must be integers ({exc})") from exc
    if ids.size and ids.min() < 1:
        raise DatasetError(f"{where}: item ids must be >= 1 (0 is padding)")
    return ids


def read_sessions(path: str | Path) -> list[IntArray]:
    """One array of item ids per line; empty lines are skipped."""
    out: list[IntArray] = []
    with open_text(path, gz=True) as fh:  # a bytes-read bar on a terminal
        for n, line in enumerate(fh, 1):
            if line.strip():
                out.append(_parse_ids(line, f"{path}:{n}"))
    return out


def read_test(path: str | Path) -> tuple[list[IntArray], IntArray]:
    """Test prefixes and labels from a ``prefix<TAB>label`` file with that header."""
    prefixes: list[IntArray] = []
    labels: list[int] = []
    with open_text(path, gz=True) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != ["prefix", "label"]:
            raise DatasetError(f"{path}: header must be 'prefix<TAB>label', got {header}")
        for n, line in enumerate(fh, 2):
            line = line.rstrip("\n")
            if not line:
                continue
            prefix, sep, label = line.partition("\t")
            lab = _parse_ids(label, f"{path}:{n}")
            if not sep or lab.size != 1:
                raise DatasetError(f"{path}:{n}: expected 'prefix<TAB>label'")
            ids = _parse_ids(prefix, f"{path}:{n}")
            if ids.size == 0:
                raise DatasetError(f"{path}:{n}: empty prefix")
            prefixes.append(ids)
            labels.append(int(lab[0]))
    return prefixes, np.asarray(labels, dtype=np.int64)


def load_dataset(path: str | Path) -> SessionDataset:
    train_path, test_path = dataset_files(path)
    sessions = read_sessions(train_path)
    if not sessions:
        raise DatasetError(f"{train_path} holds no sessions")
    prefixes, labels = read_test(test_path)
    max_id = max(int(s.max()) for s in sessions if s.size)
    if prefixes:
        max_id = max(max_id, int(labels.max()), max(int(p.max()) for p in prefixes))
    return SessionDataset(Path(path).name, sessions, prefixes, labels, max_id + 1)


def pad_prefixes(prefixes: Sequence[IntArray], max_len: int) -> IntArray:
    """Right-align each prefix (keeping its ``max_len`` most recent items) into a 0-padded matrix."""
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    out = np.zeros((len(prefixes), max_len), dtype=np.int64)
    for i, p in enumerate(prefixes):
        tail = p[-max_len:]
        if tail.size:
            out[i, max_len - tail.size :] = tail
    return out


def make_examples(sessions: Sequence[IntArray], max_len: int) -> Examples:
    """Every ``(s[:i], s[i])`` for ``i in 1..len(s)-1`` of every session, in session order."""
    prefixes: list[IntArray] = []
    labels: list[int] = []
    for s in sessions:
        for i in range(1, len(s)):
            prefixes.append(s[max(0, i - max_len) : i])
            labels.append(int(s[i]))
    return Examples(pad_prefixes(prefixes, max_len), np.asarray(labels, dtype=np.int64))


def time_split(
    sessions: Sequence[IntArray], val_fraction: float
) -> tuple[list[IntArray], list[IntArray]]:
    """Split sessions (given in time order) into (train, validation): validation is the END."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(sessions) * val_fraction)
    cut = len(sessions) - n_val
    return list(sessions[:cut]), list(sessions[cut:])


def item_counts(labels: IntArray, n_items: int) -> npt.NDArray[np.float64]:
    """How often each item id is a training label (row 0, padding, stays 0)."""
    counts = np.bincount(labels, minlength=n_items).astype(np.float64)
    counts[PAD] = 0.0
    return counts
