"""A file-system model registry: immutable versions and an atomic "current" pointer.

Layout under a root (default ``<state_dir>/models``)::

    <root>/<name>/v1/            model file, config.json, metrics.json, manifest.json
    <root>/<name>/v2/
    <root>/<name>/CURRENT.json   {"version": "v2", "history": ["v1"], "updated_at": ...}
    <root>/<name>/decisions.jsonl        every promotion decision, one JSON object a line
    <root>/<name>/decisions/v2.json      the decision about v2 (the version's gate record)

* ``register`` builds a version in a hidden temp folder and renames it into place, so a version
  folder, once visible, is complete and never changes.
* ``promote`` / ``rollback`` rewrite ``CURRENT.json`` with write-to-temp + fsync + ``os.replace``:
  a reader (the scorer's hot reload) sees the old pointer or the new one, never half of one, and
  the version it names is already complete. ``history`` is the stack of earlier promoted
  versions; ``rollback`` pops it.
* ``record_decision`` appends a promotion decision (``recsys retrain``: both models' metrics
  and the reason) to ``decisions.jsonl`` (fsync'd) and writes it as the decided version's
  record beside, not into, its folder (a version folder never changes once visible).
* Writers serialise on ``<root>/<name>/.lock`` (``flock``); readers take no lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

POINTER = "CURRENT.json"
DECISIONS = "decisions.jsonl"
MANIFEST = "manifest.json"
# the retrieval model: registered by ``models.train_two_tower``, read by the embeddings
# dataflow (``streams.tower_embedder``) and the scorer (``online.tower``)
TWO_TOWER = "two_tower"
TWO_TOWER_VOCAB = "item_ids.json"  # in its version folder: {item_id: id-embedding row}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(ValueError):
    """Unknown model or version, nothing to roll back to, or a malformed registry entry."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path  # the version folder
    model_file: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    created_at: float


def default_root(state_dir: str | Path) -> Path:
    return Path(state_dir) / "models"


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} must match {_NAME_RE.pattern}")
    return name


def _vnum(version: str) -> int:
    m = _VERSION_RE.match(version)
    if not m:
        raise RegistryError(f"version {version!r} must look like v1, v2, ...")
    return int(m.group(1))


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- paths -------------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def path(self, name: str, version: str) -> Path:
        _vnum(version)
        p = self.model_dir(name) / version
        if not (p / MANIFEST).is_file():
            raise RegistryError(f"model {name!r} has no version {version!r} under {self.root}")
        return p

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        with (d / ".lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # --- versions ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def versions(self, name: str) -> list[str]:
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if _VERSION_RE.match(p.name) and (p / MANIFEST).is_file()]
        return sorted(found, key=_vnum)

    def register(
        self,
        name: str,
        path_or_state: str | Path | Mapping[str, Any],
        metrics: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        model_filename: str = "model.pt",
    ) -> str:
        """Store a new immutable version; returns its name ("v<n>"). Does not promote it.

        ``path_or_state``: a model file (copied as ``model_filename``), a folder (its contents
        copied) or a mapping (a state dict / checkpoint dict, written with ``torch.save``).
        """
        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            if isinstance(path_or_state, Mapping):
                import torch  # only needed for in-memory states

                model_file = model_filename
                torch.save(dict(path_or_state), tmp / model_file)
            else:
                src = Path(path_or_state)
                if src.is_file():
                    model_file = model_filename
                    shutil.copy2(src, tmp / model_file)
                elif src.is_dir():
                    shutil.copytree(src, tmp, dirs_exist_ok=True)
                    model_file = model_filename if (tmp / model_filename).exists() else ""
                else:
                    raise RegistryError(f"nothing to register at {src}")
            _write_json_atomic(tmp / "metrics.json", dict(metrics))
            _write_json_atomic(tmp / "config.json", dict(config or {}))
            files = {
                p.relative_to(tmp).as_posix(): _sha256(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {"name": name, "model_file": model_file, "created_at": time.time(), "files": files}
            with self._lock(name):
                existing = [_vnum(v) for v in self.versions(name)]
                version = f"v{max(existing, default=0) + 1}"
                manifest["version"] = version
                _write_json_atomic(tmp / MANIFEST, manifest)
                os.rename(tmp, d / version)  # atomic: the version appears complete
            return version
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get(self, name: str, version: str) -> ModelVersion:
        p = self.path(name, version)
        manifest = json.loads((p / MANIFEST).read_text())

        def read(fname: str) -> dict[str, Any]:
            f = p / fname
            return dict(json.loads(f.read_text())) if f.is_file() else {}

        return ModelVersion(
            name=name,
            version=version,
            path=p,
            model_file=p / manifest.get("model_file", ""),
            metrics=read("metrics.json"),
            config=read("config.json"),
            created_at=float(manifest.get("created_at", 0.0)),
        )

    # --- the pointer -------------------------------------------------------------------------
    def pointer(self, name: str) -> dict[str, Any] | None:
        """The raw pointer (``version``, ``history``, ``updated_at``) or None if never promoted."""
        f = self.model_dir(name) / POINTER
        try:
            data: dict[str, Any] = json.loads(f.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:  # cannot happen with atomic writes; say so if it does
            raise RegistryError(f"{f} is corrupt: {exc}") from exc
        return data

    def current(self, name: str) -> ModelVersion | None:
        ptr = self.pointer(name)
        return None if ptr is None else self.get(name, str(ptr["version"]))

    def promote(self, name: str, version: str) -> ModelVersion:
        with self._lock(name):
            self.path(name, version)  # must exist and be complete
            ptr = self.pointer(name) or {"version": None, "history": []}
            history = [str(v) for v in ptr.get("history", [])]
            if ptr.get("version") == version:
                return self.get(name, version)
            if ptr.get("version"):
                history.append(str(ptr["version"]))
            self._set(name, version, history)
        return self.get(name, version)

    def rollback(self, name: str) -> ModelVersion:
        """Point back at the previously promoted version."""
        with self._lock(name):
            ptr = self.pointer(name)
            history = [str(v) for v in (ptr or {}).get("history", [])]
            if not history:
                raise RegistryError(f"model {name!r} has no earlier promoted version to roll back to")
            previous = history.pop()
            self.path(name, previous)
            self._set(name, previous, history)
        return self.get(name, previous)

    # --- promotion decisions ------------------------------------------------------------------
    def record_decision(self, name: str, decision: Mapping[str, Any]) -> None:
        """Append ``decision`` (JSON-able; ``new_version`` names the version decided on) to the
        model's ``decisions.jsonl`` and keep it as that version's record (``decision``)."""
        line = json.dumps(dict(decision), sort_keys=True, default=str, allow_nan=False)
        version = decision.get("new_version")
        with self._lock(name):
            d = self.model_dir(name)
            with (d / DECISIONS).open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if version:
                _vnum(str(version))
                (d / "decisions").mkdir(exist_ok=True)
                _write_json_atomic(d / "decisions" / f"{version}.json", dict(decision))

    def decisions(self, name: str) -> list[dict[str, Any]]:
        """Every recorded decision about ``name``, oldest first."""
        f = self.model_dir(name) / DECISIONS
        if not f.is_file():
            return []
        return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]

    def decision(self, name: str, version: str) -> dict[str, Any] | None:
        """The latest recorded decision about ``version`` (None if none)."""
        _vnum(version)
        f = self.model_dir(name) / "decisions" / f"{version}.json"
        return dict(json.loads(f.read_text())) if f.is_file() else None

    def _set(self, name: str, version: str, history: list[str]) -> None:
        data = {"name": name, "version": version, "history": history, "updated_at": time.time()}
        _write_json_atomic(self.model_dir(name) / POINTER, data)


# --- module-level shortcuts ------------------------------------------------------------------


def register(
    name: str,
    path_or_state: str | Path | Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    root: str | Path,
    config: Mapping[str, Any] | None = None,
) -> str:
    return ModelRegistry(root).register(name, path_or_state, metrics, config)


def promote(name: str, version: str, *, root: str | Path) -> ModelVersion:
    return ModelRegistry(root).promote(name, version)


def rollback(name: str, *, root: str | Path) -> ModelVersion:
    return ModelRegistry(root).rollback(name)


def current(name: str, *, root: str | Path) -> ModelVersion | None:
    return ModelRegistry(root).current(name)
