"""gRPC's I/O engine is chosen by ``GRPC_EXPERIMENTS`` before gRPC loads (``core.grpc_env``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core import grpc_env

PROBE = (
    "import json, os, sys; import recsys.cli.main; "
    "print(json.dumps({'value': os.environ.get('GRPC_EXPERIMENTS'), 'grpc_loaded': 'grpc' in sys.modules}))"
)


def _cli_import(env_value: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != grpc_env.VARIABLE}
    if env_value is not None:
        env[grpc_env.VARIABLE] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return dict(json.loads(out.stdout))


def test_the_cli_chooses_the_engine_before_grpc_loads():
    got = _cli_import(None)
    assert got["value"] == grpc_env.EPOLL_IO
    # the subcommands (which import gRPC) load later, in main(): the choice is read then
    assert got["grpc_loaded"] is False


@pytest.mark.parametrize("explicit", ["", "-event_engine_client"])
def test_an_operators_setting_stands(explicit):
    assert _cli_import(explicit)["value"] == explicit


def test_apply_on_a_given_environment():
    env: dict[str, str] = {}
    assert grpc_env.apply(env) == grpc_env.EPOLL_IO and env == {grpc_env.VARIABLE: grpc_env.EPOLL_IO}
    kept = {grpc_env.VARIABLE: "x"}
    assert grpc_env.apply(kept) == "x" and kept == {grpc_env.VARIABLE: "x"}


def test_too_late_once_grpc_has_loaded(monkeypatch):
    import grpc  # noqa: F401 - loaded, as in any process that imported the server

    monkeypatch.delenv(grpc_env.VARIABLE, raising=False)
    assert grpc_env.apply() is None
    assert grpc_env.VARIABLE not in os.environ


def test_described_for_the_start_up_line():
    assert grpc_env.describe({}) == "gRPC defaults (EventEngine)"
    assert grpc_env.describe({grpc_env.VARIABLE: grpc_env.EPOLL_IO}) == "epoll I/O manager"
    assert grpc_env.describe({grpc_env.VARIABLE: "-x"}) == "GRPC_EXPERIMENTS=-x"
