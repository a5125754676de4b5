"""core.terminal: live status tables on a terminal, plain lines elsewhere, silent progress off a TTY."""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from core import terminal

ANSI = re.compile(r"\x1b\[")


@pytest.fixture(autouse=True)
def _capable_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced console is interactive unless TERM says dumb: tests must not depend on the
    TERM they were started under."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


def tty_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def plain_console() -> Console:
    return Console(file=io.StringIO(), width=120)  # a StringIO is no terminal


def text(con: Console) -> str:
    out = con.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_status_table_renders_the_metrics_on_a_terminal() -> None:
    con = tty_console()
    assert terminal.interactive(con)
    con.print(terminal.status_table({"events/s": 1234.0, "lag": 7, "p99 ms": 12.5, "CTR": "0.031"},
                                    title="recsys up"))
    out = text(con)
    for value in ("recsys up", "events/s", "1234", "lag", "7", "p99 ms", "12.5", "CTR", "0.031"):
        assert value in out, value
    assert ANSI.search(out)  # styled: it is a terminal


def test_live_status_redraws_on_a_terminal() -> None:
    con = tty_console()
    with terminal.LiveStatus("recsys sim", con=con) as live:
        assert live.enabled
        live.update({"events": 10, "CTR": 0.05}, line="never printed")
        live.update({"events": 20, "CTR": 0.06}, line="never printed")
    out = text(con)
    assert "never printed" not in out
    assert "20" in out and "0.060" in out and ANSI.search(out)


def test_live_status_prints_plain_lines_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    con = plain_console()
    assert not terminal.interactive(con)
    with terminal.LiveStatus("recsys loadtest", con=con) as live:
        assert not live.enabled
        live.update({"sent": 500, "errors": 0}, line="[loadtest 500 rps] 1/2s sent 500")
        live.update({"sent": 1000, "errors": 0, "p99 ms": 1.25})
    err = capsys.readouterr().err
    assert err.splitlines() == ["[loadtest 500 rps] 1/2s sent 500",
                                "[recsys loadtest] sent 1000  errors 0  p99 ms 1.2"]
    assert not ANSI.search(err) and text(con) == ""


def test_status_line_is_plain_text() -> None:
    line = terminal.status_line({"events/s": 1500.25, "CTR": 0.0312, "lag": 3}, title="up")
    assert line == "[up] events/s 1500  CTR 0.031  lag 3"
    assert not ANSI.search(line)


def test_progress_is_silent_when_not_a_tty() -> None:
    con = plain_console()
    with terminal.progress("train", total=10, con=con) as bar:
        for _ in range(10):
            bar.advance()
        bar.update(info="epoch 1/1")
    assert bar.completed == 10
    assert text(con) == ""


def test_progress_counts_to_the_total_when_forced() -> None:
    con = tty_console()
    with terminal.progress("train MMoE", total=10, con=con) as bar:
        for _ in range(10):
            bar.advance()  # rate limited: the last pushes come at the end
        bar.update(info="epoch 2/2 loss 0.1234")
    out = text(con)
    assert bar.completed == bar.total == 10
    assert "train MMoE" in out and "10/10" in out and "100%" in out and "epoch 2/2" in out


def test_progress_enabled_false_is_silent_even_on_a_terminal() -> None:
    con = tty_console()
    with terminal.progress("rank 1", total=3, con=con, enabled=False) as bar:
        bar.advance(3)
    assert bar.completed == 3 and text(con) == ""


@pytest.mark.parametrize("enabled", [False, True])
def test_open_text_reads_gzip_and_plain_files_alike(tmp_path: Path, enabled: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "console", tty_console)  # where a bar would go: not the test's stderr
    lines = [f"{i} {i + 1}\n" for i in range(5000)]
    gz, txt = tmp_path / "a.txt.gz", tmp_path / "a.txt"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.writelines(lines)
    txt.write_text("".join(lines), encoding="utf-8")
    for path in (gz, txt):
        with terminal.open_text(path, enabled=enabled) as fh:
            assert list(fh) == lines
    with pytest.raises(FileNotFoundError), terminal.open_text(tmp_path / "nope.gz", enabled=enabled):
        pass
