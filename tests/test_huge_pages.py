"""`recsys serve` restarts itself once with glibc's malloc on transparent huge pages
(``core.huge_pages``); the end-to-end check is in ``tests/test_bench_serve.py``."""

from __future__ import annotations

import sys

import pytest

from core import huge_pages


class Execed(Exception):
    pass


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((path, argv, env))
        raise Execed

    monkeypatch.setattr(huge_pages.os, "execve", fake_execve)
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(huge_pages.sys, "platform", "linux")
    return calls


def test_restarts_once_with_the_tunable_added(execs, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0")
    with pytest.raises(Execed):
        huge_pages.reexec_with_huge_pages("recsys.cli.main", ["serve", "--workers", "2"])
    ((path, argv, env),) = execs
    assert path == sys.executable and argv == [sys.executable, "-m", "recsys.cli.main", "serve",
                                               "--workers", "2"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.check=0:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])  # the restarted process
    assert huge_pages.active()
    huge_pages.reexec_with_huge_pages("recsys.cli.main", ["serve"])  # returns: no second restart
    assert len(execs) == 1


def test_an_explicit_setting_stands_and_is_reported_as_it_is(execs, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    huge_pages.reexec_with_huge_pages("recsys.cli.main", ["serve"])
    assert execs == [] and not huge_pages.active()


@pytest.mark.parametrize("mode", ["never", None])
def test_no_restart_where_thp_is_off_or_unknown(execs, monkeypatch, mode):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: mode)
    huge_pages.reexec_with_huge_pages("recsys.cli.main", ["serve"])
    assert execs == []


def test_a_failed_restart_goes_on_without(monkeypatch):
    def refuse(*_a: object) -> None:
        raise PermissionError("exec refused")

    monkeypatch.setattr(huge_pages.os, "execve", refuse)
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: "always")
    monkeypatch.setattr(huge_pages.sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    huge_pages.reexec_with_huge_pages("recsys.cli.main", ["serve"])  # returns, no exception
    assert not huge_pages.active()


def test_thp_mode_reads_the_bracketed_choice(tmp_path, monkeypatch):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    monkeypatch.setattr(huge_pages, "THP_MODE", f)
    assert huge_pages.thp_mode() == "madvise"
    f.unlink()
    assert huge_pages.thp_mode() is None
