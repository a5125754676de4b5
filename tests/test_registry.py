"""Model registry: immutable versions, promote / rollback, an atomic pointer."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from models.registry import POINTER, ModelRegistry, RegistryError, current, promote, register
from recsys.cli.main import main as recsys_main


def _model_file(tmp_path: Path, tag: str) -> Path:
    p = tmp_path / f"src-{tag}.pt"
    p.write_bytes(f"weights {tag}".encode())
    return p


def test_register_creates_numbered_complete_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    v1 = reg.register("tt", _model_file(tmp_path, "a"), {"p_at_20": 60.0}, {"dim": 64})
    v2 = reg.register("tt", _model_file(tmp_path, "b"), {"p_at_20": 61.0})
    assert (v1, v2) == ("v1", "v2")
    assert reg.versions("tt") == ["v1", "v2"]
    mv = reg.get("tt", "v1")
    assert mv.model_file.read_bytes() == b"weights a"
    assert mv.metrics == {"p_at_20": 60.0} and mv.config == {"dim": 64}
    manifest = json.loads((mv.path / "manifest.json").read_text())
    assert manifest["version"] == "v1" and "model.pt" in manifest["files"]
    assert mv.model_file.name == "model.pt"
    assert reg.current("tt") is None  # registering does not promote
    assert not list((tmp_path / "models" / "tt").glob(".tmp-*"))


def test_register_state_dict_and_folder(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    v = reg.register("m", {"w": torch.ones(3)}, {"auc": 0.7})
    assert torch.equal(torch.load(reg.get("m", v).model_file)["w"], torch.ones(3))
    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"x")
    (src / "sub" / "calib.json").write_text("{}")
    v2 = reg.register("m", src, {})
    assert (reg.get("m", v2).path / "sub" / "calib.json").is_file()
    assert reg.get("m", v2).model_file.name == "model.pt"
    with pytest.raises(RegistryError, match="nothing to register"):
        reg.register("m", tmp_path / "missing.pt", {})
    assert reg.versions("m") == ["v1", "v2"]


def test_promote_rollback_history(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for tag in "abc":
        register("tt", _model_file(tmp_path, tag), {"tag": tag}, root=root)
    assert promote("tt", "v1", root=root).version == "v1"
    reg = ModelRegistry(root)
    reg.promote("tt", "v3")
    reg.promote("tt", "v3")  # promoting the current version is a no-op, not history
    assert reg.pointer("tt")["history"] == ["v1"]  # type: ignore[index]
    reg.promote("tt", "v2")
    assert current("tt", root=root).version == "v2"  # type: ignore[union-attr]
    assert reg.rollback("tt").version == "v3"
    assert reg.rollback("tt").version == "v1"
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        reg.rollback("tt")
    assert reg.current("tt").metrics == {"tag": "a"}  # type: ignore[union-attr]


def test_bad_names_and_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register("tt", _model_file(tmp_path, "a"), {})
    with pytest.raises(RegistryError, match="no version"):
        reg.promote("tt", "v9")
    with pytest.raises(RegistryError, match="look like"):
        reg.promote("tt", "latest")
    with pytest.raises(RegistryError, match="must match"):
        reg.register("../evil", _model_file(tmp_path, "b"), {})


def test_half_written_version_is_invisible(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register("tt", _model_file(tmp_path, "a"), {})
    crashed = tmp_path / "tt" / ".tmp-deadbeef"  # a register that died midway
    crashed.mkdir()
    (crashed / "model.pt").write_bytes(b"partial")
    (tmp_path / "tt" / "v7").mkdir()  # a folder without a manifest is not a version either
    assert reg.versions("tt") == ["v1"]
    assert reg.register("tt", _model_file(tmp_path, "b"), {}) == "v2"


def test_pointer_is_atomic_under_concurrent_readers(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    for tag in "ab":
        reg.register("tt", _model_file(tmp_path, tag), {"tag": tag})
    reg.promote("tt", "v1")
    pointer = tmp_path / "tt" / POINTER
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[Exception] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = json.loads(pointer.read_text())  # no lock: like the scorer's hot reload
                mv = reg.get("tt", data["version"])
                assert mv.model_file.read_bytes() in (b"weights a", b"weights b")
                seen.add(data["version"])
            except (OSError, ValueError, KeyError, AssertionError, RegistryError) as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(150):
        reg.promote("tt", "v2")
        reg.rollback("tt")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert seen == {"v1", "v2"}
    assert not [p for p in pointer.parent.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_registers_get_distinct_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    src = _model_file(tmp_path, "a")
    got: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            v = reg.register("tt", src, {})
            with lock:
                got.append(v)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 21)]


def test_cli_promote_and_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "models"
    reg = ModelRegistry(root)
    for tag in "ab":
        reg.register("two_tower", _model_file(tmp_path, tag), {"p_at_20": 1.0})
    base = ["--state-dir", str(tmp_path), "train"]
    assert recsys_main([*base, "promote", "two_tower", "v1", "--out", str(root)]) == 0
    assert recsys_main([*base, "promote", "two_tower", "v2", "--out", str(root)]) == 0
    assert recsys_main([*base, "rollback", "two_tower", "--out", str(root)]) == 0
    assert reg.current("two_tower").version == "v1"  # type: ignore[union-attr]
    assert recsys_main([*base, "rollback", "two_tower", "--out", str(root)]) == 2
    assert "no earlier promoted version" in capsys.readouterr().err
    # default root: <state_dir>/models
    ModelRegistry(tmp_path / "models").register("x", _model_file(tmp_path, "c"), {})
    assert recsys_main([*base, "promote", "x", "v1"]) == 0
