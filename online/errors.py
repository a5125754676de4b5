"""Domain errors and their gRPC status, mapped in ONE place."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


class RecsysError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(RecsysError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotReady(RecsysError):
    code = grpc.StatusCode.UNAVAILABLE


def grpc_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Turn domain errors raised by a servicer method into gRPC status codes."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return method(self, request, context)
        except RecsysError as exc:
            context.abort(exc.code, str(exc))
            raise  # unreachable: abort raises

    return wrapper
