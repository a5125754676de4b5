"""The one way a component opens a Redis client.

Every production client (scorer store, followers, dataflow sinks, benchmarks) comes from
``redis_client``: the address (``RECSYS_REDIS_URL``, else the embedded redis published in
``state_dir``), the password (``RECSYS_REDIS_PASSWORD``), TLS (a ``rediss://`` URL, verified
against ``RECSYS_REDIS_TLS_CA_FILE`` when set) and the socket, connect and health-check
settings each site chooses. A password in the URL (``redis://:pw@host``) wins over the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from core.settings import Settings, SettingsError, resolve_redis_url


def redis_client(
    settings: Settings | None,
    *,
    url: str | None = None,
    timeout_s: float | None,
    connect_timeout_s: float | None = None,
    health_check_interval_s: float = 0.0,
    decode_responses: bool = False,
    **kw: Any,
) -> redis.Redis:
    """A client for ``url`` (default: the settings' Redis) with the settings' credentials.

    ``timeout_s``: the socket timeout of every command (``None``: wait forever);
    ``connect_timeout_s``: of connecting (``None``: ``timeout_s``); ``health_check_interval_s``:
    PING a connection idle this long before using it (0: never). ``kw`` goes to redis-py.
    ``settings`` may be ``None`` only with ``url`` (no password, no CA file)."""
    if url is None:
        if settings is None:
            raise ValueError("redis_client needs settings or a url")
        url = resolve_redis_url(settings)
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": health_check_interval_s,
        "decode_responses": decode_responses,
    }
    if settings is not None:
        password = settings.redis_password.get_secret_value()
        if password:
            options["password"] = password
        if settings.redis_tls_ca_file:
            scheme = urlparse(url).scheme
            if scheme != "rediss":  # (the URL itself is not shown: it may hold a password)
                raise SettingsError(f"redis_tls_ca_file is set but the Redis address is {scheme}://, "
                                    "not rediss:// (TLS)")
            if not Path(settings.redis_tls_ca_file).is_file():
                raise SettingsError(f"redis_tls_ca_file {settings.redis_tls_ca_file} does not exist")
            options["ssl_ca_certs"] = settings.redis_tls_ca_file
    options.update(kw)
    return redis.Redis.from_url(url, **options)


__all__ = ["redis_client"]
