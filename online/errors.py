"""Domain errors and their gRPC status, mapped in ONE place."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

T = TypeVar("T")


class RecsysError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(RecsysError):
    code = grpc.StatusCode.INVALID_ARGUMENT


def grpc_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn domain errors raised by an async (``grpc.aio``) servicer method into gRPC status
    codes with their message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except RecsysError as exc:
            await context.abort(exc.code, str(exc))
            raise  # unreachable: abort raises

    return wrapper
