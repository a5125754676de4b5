"""The request path's Redis wire: a batch of commands packed to RESP by hand, written at once,
and its replies parsed by hiredis, on a connection redis-py opened (so connecting, AUTH,
SELECT, TLS and the socket timeout are redis-py's).

Why: for the few small commands of one request, redis-py's per-command machinery (argument
encoding in Python, the parser wrapper, reply callbacks) costs more CPU than Redis spends
answering. Packing is a few byte-format operations; parsing is hiredis's C reader.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[str | bytes | int | float]


def pack(commands: Sequence[Command]) -> bytes:
    """Commands -> one RESP request (arrays of bulk strings; str as UTF-8, numbers as text)."""
    out: list[bytes] = []
    for cmd in commands:
        out.append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            if isinstance(arg, bytes):
                b = arg
            elif isinstance(arg, str):
                b = arg.encode()
            elif isinstance(arg, float):
                b = repr(arg).encode()
            else:
                b = str(int(arg)).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class Wire:
    """One connection; not shared between threads. Any error leaves it unusable (``broken``):
    no half-read reply can reach the next batch."""

    def __init__(self, client: redis.Redis) -> None:
        conn: Any = client.connection_pool.make_connection()
        conn.connect()
        self.conn = conn
        self.sock: socket.socket = conn._sock  # redis-py's socket, after its handshake
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.broken = False

    def roundtrip(self, commands: Sequence[Command], timeout_s: float | None = None) -> list[Any]:
        """Send ``commands`` in one write; their replies in order. An error reply raises
        ``ResponseError`` once all replies are read; I/O errors raise redis-py's
        ``ConnectionError`` / ``TimeoutError``. ``timeout_s`` replaces the socket timeout."""
        sock, reader = self.sock, self.reader
        old = sock.gettimeout()
        try:
            if timeout_s is not None:
                sock.settimeout(timeout_s)
            sock.sendall(pack(commands))
            replies: list[Any] = []
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is False:  # needs more bytes
                    data = sock.recv(65536)
                    if not data:
                        raise RedisConnectionError("Redis closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
        except TimeoutError as exc:
            self.close()
            raise RedisTimeoutError(f"Redis did not answer in time: {exc}") from exc
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise RedisConnectionError(f"Redis connection failed: {exc}") from exc
        except BaseException:
            self.close()
            raise
        finally:
            if timeout_s is not None and not self.broken:
                sock.settimeout(old)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        self.broken = True
        self.conn.disconnect()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
