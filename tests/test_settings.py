"""The one settings object: strict, layered (defaults < file < env < overrides), secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from core.settings import Settings, SettingsError, load_settings, resolve_kafka_bootstrap, settings_to_env


def test_env_overrides_file_and_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('grpc_port = 6000\nk_default = 10\nsurfaces = ["home", "pdp"]\n')
    s = load_settings(env={"RECSYS_GRPC_PORT": "7000", "RECSYS_STREAM_RECOVERY": "false"},
                      config_file=cfg)
    assert s.grpc_port == 7000  # env beats file
    assert s.k_default == 10  # file beats default
    assert s.surfaces == ("home", "pdp")
    assert s.stream_recovery is False


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="RECSYS_GRCP_PORT"):
        load_settings(env={"RECSYS_GRCP_PORT": "1"})
    cfg = tmp_path / "s.toml"
    cfg.write_text("grpc_prot = 1\n")
    with pytest.raises(SettingsError, match="grpc_prot"):
        load_settings(env={}, config_file=cfg)


@pytest.mark.parametrize("env, fragment", [
    ({"RECSYS_GRPC_PORT": "abc"}, "grpc_port"),
    ({"RECSYS_STREAM_RECOVERY": "maybe"}, "not a boolean"),
    ({"RECSYS_K_DEFAULT": "500"}, "k_default"),
    ({"RECSYS_AB_ARMS": "model,bogus"}, "ab_arms"),
    ({"RECSYS_RANKER_BF16": "yes"}, "ranker_bf16 must be auto, on or off"),
    ({"RECSYS_GRPC_EVENT_LOOP": "trio"}, "grpc_event_loop must be uvloop or asyncio"),
    ({"RECSYS_ITEM_REFRESH_HOT_S": "-1"}, "item_refresh_hot_s"),
])
def test_bad_values_are_clear_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env=env)


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(AttributeError):
        s.grpc_port = 1  # type: ignore[misc]


def test_secrets_never_printed() -> None:
    s = load_settings(env={"RECSYS_REDIS_PASSWORD": "hunter2", "RECSYS_KAFKA_SASL_PASSWORD": "pw"})
    assert isinstance(s.redis_password, SecretStr) and s.redis_password.get_secret_value() == "hunter2"
    shown = repr(s) + str(s.redacted())
    assert "hunter2" not in shown and "'pw'" not in shown


def test_embedded_address_discovery(tmp_path: Path) -> None:
    s = load_settings(env={}, state_dir=str(tmp_path))
    with pytest.raises(SettingsError, match="recsys broker"):
        resolve_kafka_bootstrap(s)
    (tmp_path / "broker.json").write_text('{"bootstrap": "127.0.0.1:1234"}')
    assert resolve_kafka_bootstrap(s) == "127.0.0.1:1234"
    assert resolve_kafka_bootstrap(s.replace(kafka_bootstrap="kafka:9092")) == "kafka:9092"


def test_overrides_beat_env_and_are_as_strict(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("grpc_port = 6000\n")
    s = load_settings(env={"RECSYS_GRPC_PORT": "7000"}, config_file=cfg, overrides={"grpc_port": "8000"})
    assert s.grpc_port == 8000  # `--set` beats env beats file
    with pytest.raises(SettingsError, match="unknown setting 'grpc_prot'"):
        load_settings(env={}, overrides={"grpc_prot": "1"})
    with pytest.raises(SettingsError, match=r"grpc_port.*override"):
        load_settings(env={}, overrides={"grpc_port": "x"})
    cfg.write_text('grpc_port = "x"\n')
    with pytest.raises(SettingsError, match=f"grpc_port.*config file {cfg}"):
        load_settings(env={}, config_file=cfg)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(env={"RECSYS_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(SettingsError, match="booleans are not integers"):
        Settings(grpc_port=True)


def test_replace_is_a_validated_copy(tmp_path: Path) -> None:
    s = Settings(state_dir=str(tmp_path))
    assert s.state_dir == tmp_path
    r = s.replace(ab_arms="model,popular", grpc_port="6000")
    assert r.ab_arms == ("model", "popular") and r.grpc_port == 6000 and s.grpc_port == 50051
    with pytest.raises(SettingsError, match="ab_arms"):
        s.replace(ab_arms="bogus")
    with pytest.raises(SettingsError, match="unknown setting 'nope'"):
        s.replace(nope=1)


def test_settings_to_env_round_trips_secrets_included() -> None:
    s = load_settings(env={"RECSYS_REDIS_PASSWORD": "hunter2", "RECSYS_SURFACES": "home,cart",
                           "RECSYS_STREAM_RECOVERY": "false"})
    env = settings_to_env(s, base={"PATH": "/bin", "RECSYS_STALE": "x"})
    assert "RECSYS_STALE" not in env and env["PATH"] == "/bin"
    assert env["RECSYS_REDIS_PASSWORD"] == "hunter2"  # the child process must authenticate
    assert load_settings(env=env) == s
