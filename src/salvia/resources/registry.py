"""How a resource family declares the wire operations it implements.

A family is a class whose methods carry `@operation("CreateExperiment")`; `collect` maps each
operation name to its bound method. A method takes the validated request (the service model's
member names) and returns the response members; SageMaker's names stop at this boundary.

Read-only operations (Describe*, List*, ...) are marked so the server may run them on the event
loop: they never wait on a lock, and skipping the thread hop triples their throughput.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Handler = Callable[[dict[str, Any]], dict[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__salvia_operation__"
_READ_ONLY = "__salvia_read_only__"
READ_PREFIXES = ("Describe", "List", "Get", "Search", "BatchGet", "BatchDescribe", "Query")


def operation(name: str) -> Callable[[F], F]:
    def mark(method: F) -> F:
        setattr(method, _MARK, name)
        setattr(method, _READ_ONLY, name.startswith(READ_PREFIXES))
        return method

    return mark


def is_read_only(handler: Handler) -> bool:
    return bool(getattr(handler, _READ_ONLY, False))


def collect(*families: object) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {}
    for family in families:
        for attribute in dir(type(family)):
            name = getattr(getattr(type(family), attribute), _MARK, None)
            if name is None:
                continue
            if name in handlers:
                raise RuntimeError(f"operation {name} is implemented twice")
            handlers[name] = getattr(family, attribute)
    return handlers
