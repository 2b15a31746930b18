"""Immutable records like typing.NamedTuple, without importing typing.

typing's import is a measurable part of a frozen binary's start (docs/design.md, "Performance
budget"), paid on every pod start. `record` reads a class body of annotated fields - the annotations
stay unevaluated strings under `from __future__ import annotations` - and makes it a
collections.namedtuple subclass with the same fields, defaults, methods and docstring. Type checkers
see a frozen dataclass instead (dataclass_transform), so constructor calls are checked; code that
needs tuple behaviour says so.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (this module)
if TYPE_CHECKING:
    from typing import TypeVar, dataclass_transform

    T = TypeVar("T")

INTERNALS = ("__dict__", "__weakref__", "__annotations__")


def _record(cls: type[T]) -> type[T]:
    fields = list(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 - inspect costs more than typing
    defaults = [cls.__dict__[name] for name in fields if name in cls.__dict__]
    if any(name not in cls.__dict__ for name in fields[len(fields) - len(defaults):]):
        raise TypeError(f"{cls.__name__}: fields with defaults must come last")
    base = collections.namedtuple(cls.__name__, fields, defaults=defaults, module=cls.__module__)  # type: ignore[misc]
    namespace = {key: value for key, value in cls.__dict__.items() if key not in fields and key not in INTERNALS}
    namespace["__slots__"] = ()
    return type(cls.__name__, (base,), namespace)


if TYPE_CHECKING:
    # What type checkers see: a frozen dataclass-like class whose fields are its constructor's
    # arguments. At run time it is the namedtuple _record makes.
    @dataclass_transform(frozen_default=True)
    def record(cls: type[T]) -> type[T]: ...
else:
    record = _record
