"""Record classes declared like dataclasses, made without generated code.

``dataclasses.dataclass`` writes each class's ``__init__``, ``__eq__``,
``__repr__``, ``__hash__`` and ``__setattr__`` as source text and compiles
it: the 32 classes a dump or restore loads cost 23-27 ms of every
command's start-up here (a third of its imports, more than the classes'
modules themselves), and importing dataclasses pulls in inspect, ast and
tokenize.  ``record`` gives the same classes from methods written once
below, which read the class's field table at run time: creating a class
costs a few microseconds, creating an instance about twice what a
generated ``__init__`` does (a few microseconds, for the classes procsnap
makes thousands of: maps lines, fds).

What procsnap uses of dataclasses, with dataclasses' meaning: fields
from the class's annotations in order (a base record's first), defaults
and ``field(default_factory=...)``, keyword or positional construction,
``frozen`` (assignment raises FrozenInstanceError; instances hashable by
their fields when ``eq``), ``slots`` (a new class with ``__slots__``),
``eq`` (same class, fields equal; unhashable when not frozen) and
``repr``; ``replace(obj, **changes)``.  Not supported: ClassVar and
InitVar annotations, ``__post_init__``, per-field options other than the
default, order, kw_only -- none is used, and ``record`` refuses the
options it does not know.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, dataclass_transform, overload

    T = TypeVar("T")
else:
    def overload(func: Any) -> Any:
        return func  # the last definition is the one that runs, as with typing's

    def dataclass_transform(**kwargs: Any) -> Any:
        """typing.dataclass_transform's marking, for checkers that look at it
        at run time."""
        def mark(func: Any) -> Any:
            func.__dataclass_transform__ = {
                "eq_default": kwargs.pop("eq_default", True),
                "order_default": kwargs.pop("order_default", False),
                "kw_only_default": kwargs.pop("kw_only_default", False),
                "field_specifiers": kwargs.pop("field_specifiers", ()),
                "kwargs": kwargs}
            return func
        return mark
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (dataclasses' name)."""


class _Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any, default_factory: Any) -> None:
        self.default = default
        self.default_factory = default_factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] = _MISSING) -> Any:
    """A field's default, or the callable that makes a fresh one per
    instance (dataclasses.field's two arguments procsnap uses)."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory)


# The methods every record shares; each reads the class's table:
# __rec_fields__ (names in order) and __rec_init__ ((name, default,
# factory) per field, _MISSING where there is none).

def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    table = type(self).__rec_init__
    if len(args) > len(table):
        raise TypeError(f"{type(self).__name__}() takes {len(table)} positional arguments "
                        f"but {len(args)} were given")
    put = object.__setattr__
    for (name, _, _), value in zip(table, args):
        put(self, name, value)
    for name, default, factory in table[len(args):]:
        if name in kwargs:
            put(self, name, kwargs.pop(name))
        elif default is not _MISSING:
            put(self, name, default)
        elif factory is not _MISSING:
            put(self, name, factory())
        else:
            raise TypeError(f"{type(self).__name__}() missing required argument: {name!r}")
    if kwargs:
        name = next(iter(kwargs))
        if any(n == name for n, _, _ in table[:len(args)]):
            raise TypeError(f"{type(self).__name__}() got multiple values for argument {name!r}")
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {name!r}")


def _values(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, n) for n in type(self).__rec_fields__])


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(_values(self))


def _repr(self: Any) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in type(self).__rec_fields__)
    return f"{type(self).__qualname__}({inner})"


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _make(cls: type, frozen: bool, slots: bool, eq: bool, repr: bool) -> type:
    own = [n for n in cls.__dict__.get("__annotations__", {})]
    fields: list[str] = []
    table: list[tuple[str, Any, Any]] = []
    for base in reversed(cls.__mro__[1:]):
        for entry in getattr(base, "__rec_init__", ()):
            if entry[0] not in fields:
                fields.append(entry[0])
                table.append(entry)
    seen_default = False
    for name in own:
        value = cls.__dict__.get(name, _MISSING)
        default, factory = value, _MISSING
        if isinstance(value, _Field):
            default, factory = value.default, value.default_factory
            if factory is not _MISSING or default is _MISSING:
                if hasattr(cls, name) and not slots:
                    delattr(cls, name)   # as dataclasses: no class attribute for it
        has_default = default is not _MISSING or factory is not _MISSING
        if seen_default and not has_default:
            raise TypeError(f"{cls.__name__}: non-default argument {name!r} follows "
                            "default argument")
        seen_default = seen_default or has_default
        if isinstance(value, _Field) and default is not _MISSING and not slots:
            setattr(cls, name, default)
        entry = (name, default, factory)
        if name in fields:
            table[fields.index(name)] = entry
        else:
            fields.append(name)
            table.append(entry)
    if slots:
        ns = {k: v for k, v in cls.__dict__.items()
              if k not in own and k not in ("__dict__", "__weakref__")}
        inherited = {s for b in cls.__mro__[1:] for s in getattr(b, "__slots__", ())}
        ns["__slots__"] = tuple(n for n in own if n not in inherited)
        cls = type(cls)(cls.__name__, cls.__bases__, ns)
    cls.__rec_fields__ = tuple(fields)  # type: ignore[attr-defined]
    cls.__rec_init__ = tuple(table)     # type: ignore[attr-defined]
    body = cls.__dict__

    def put(name: str, value: Any) -> None:
        if name not in body:   # as dataclasses: a method the class writes itself stays
            setattr(cls, name, value)
    put("__init__", _init)
    if repr:
        put("__repr__", _repr)
    if eq:
        put("__eq__", _eq)
        # dataclasses' rule: hashable by value when frozen, else not at all
        put("__hash__", _hash if frozen else None)
    if frozen:
        if "__setattr__" in body or "__delattr__" in body:
            raise TypeError(f"{cls.__name__}: a frozen record cannot define __setattr__")
        put("__setattr__", _frozen_setattr)
        put("__delattr__", _frozen_delattr)
    return cls


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = False, slots: bool = False, eq: bool = True,
           repr: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field,))
def record(cls: Any = None, /, *, frozen: bool = False, slots: bool = False, eq: bool = True,
           repr: bool = True) -> Any:
    """``@record`` / ``@record(frozen=..., slots=..., eq=..., repr=...)``:
    the class as ``@dataclass`` with the same arguments makes it."""
    def wrap(c: type[T]) -> type[T]:
        return _make(c, frozen, slots, eq, repr)
    return wrap if cls is None else wrap(cls)


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes`` (dataclasses.replace)."""
    cls = type(obj)
    kwargs = {n: getattr(obj, n) for n in cls.__rec_fields__}  # type: ignore[attr-defined]
    for name in changes:
        if name not in kwargs:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
    kwargs.update(changes)
    return cls(**kwargs)
