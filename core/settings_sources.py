"""How ``core.settings.Settings`` reads its values: the value types the environment, the TOML file
and overrides may give each kind of field (booleans, integers, comma lists), the sources of one
construction (a given environment mapping that refuses unknown ``RECSYS_*`` variables, the TOML
file) and pydantic's validation errors turned into one line per key naming where it came from."""

from __future__ import annotations

import contextvars
import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "RECSYS_"
CONFIG_ENV = "RECSYS_CONFIG"




class SettingsError(ValueError):
    """A setting is unknown, malformed or unusable."""


# ----------------------------------------------------------------------------------------
# value types: what the environment, the file and overrides may give each kind of field

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    low = str(raw).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _integer(raw: Any) -> Any:
    if isinstance(raw, bool):
        raise ValueError("booleans are not integers")
    return raw


def _names(raw: Any) -> Any:
    """A comma-separated string (environment, ``--set``) or a list (TOML) -> a tuple of str."""
    if isinstance(raw, str):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if isinstance(raw, list | tuple | set | frozenset):
        return tuple(str(x) for x in raw)
    return raw


Flag = Annotated[bool, BeforeValidator(_flag)]
Int = Annotated[int, BeforeValidator(_integer)]
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]


# ----------------------------------------------------------------------------------------
# where one construction reads from (set by ``load_settings``; else this process's environment)


@dataclasses.dataclass
class Origin:
    env: Mapping[str, str]
    config_file: Path | None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    file_data: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, env: Mapping[str, str], config_file: str | Path | None,
           overrides: Mapping[str, Any]) -> Origin:
        path = config_file or env.get(CONFIG_ENV)
        return cls(env, Path(path) if path else None, overrides)

    def where(self, key: str) -> str:
        """Which source gave ``key`` its (winning) value, for error messages."""
        if key in self.overrides:
            return "override"
        var = next((v for v in self.env if v.startswith(ENV_PREFIX) and v[len(ENV_PREFIX):].lower() == key),
                   None)
        if var is not None:
            return f"environment variable {var}"
        if key in self.file_data:
            return f"config file {self.config_file}"
        return "default"


ORIGIN: contextvars.ContextVar[Origin | None] = contextvars.ContextVar("recsys_settings_origin",
                                                                         default=None)


class EnvSource(EnvSettingsSource):
    """``RECSYS_*`` variables of a given mapping; an unknown one is an error (pydantic-settings
    would ignore it). The prefix is case-sensitive, the field name is not (as before)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {ENV_PREFIX + var[len(ENV_PREFIX):].lower(): value for var, value in self._given.items()
                if var.startswith(ENV_PREFIX) and var != CONFIG_ENV}

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        for var in self._given:
            if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
                continue
            key = var[len(ENV_PREFIX):].lower()
            if key not in fields:
                raise SettingsError(f"environment variable {var}: unknown setting {key!r}")
        return super().__call__()


def file_source(settings_cls: type[BaseSettings], origin: Origin) -> tuple[PydanticBaseSettingsSource, ...]:
    p = origin.config_file
    if p is None:
        return ()
    if not p.is_file():
        raise SettingsError(f"config file {p} does not exist")
    try:
        source = TomlConfigSettingsSource(settings_cls, toml_file=p)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {p}: {exc}") from exc
    origin.file_data = dict(source.toml_data)
    return (source,)


def describe_errors(exc: ValidationError, origin: Origin | None) -> str:
    """pydantic's errors as one line per key, naming the key and where its value came from
    (never the value of a secret: pydantic's own message carries the input)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if not loc:  # a check across fields (``_check``)
            out.append(msg)
            continue
        key = str(loc[0])
        where = origin.where(key) if origin is not None else "replace"
        if err.get("type") == "extra_forbidden":
            prefix = "" if where in ("override", "replace", "default") else f"{where}: "
            out.append(f"{prefix}unknown setting {key!r}")
        else:
            out.append(f"setting {key!r} ({where}): {msg}")
    return "; ".join(out)
