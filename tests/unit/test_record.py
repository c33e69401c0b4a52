"""procsnap.record: the dataclasses semantics procsnap relies on, from
methods written once instead of generated code."""
from __future__ import annotations

import pytest

from procsnap.record import FrozenInstanceError, field, record, replace


@record(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


@record(eq=False, repr=False)
class Bag:
    name: str
    items: list[int] = field(default_factory=list)


@record
class Plain:
    a: int
    b: str = "b"


def test_construction_defaults_and_factories() -> None:
    assert (Point(1).x, Point(1).y, Point(1, 2).y, Point(x=3, tags=("t",)).tags) == \
        (1, 0, 2, ("t",))
    b1, b2 = Bag("a"), Bag("b")
    b1.items.append(1)
    assert b2.items == []          # a fresh list per instance
    with pytest.raises(TypeError, match="missing required argument: 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        Point(1, 2, (), 4)  # type: ignore[call-arg]


def test_frozen_slots_eq_hash_repr() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    assert isinstance(FrozenInstanceError("x"), AttributeError)
    assert not hasattr(p, "__dict__") and Point.__slots__ == ("x", "y", "tags")
    assert p == Point(1, 2) and p != Point(2, 1) and hash(p) == hash(Point(1, 2))
    assert len({p, Point(1, 2)}) == 1
    assert repr(p) == "Point(x=1, y=2, tags=())"
    assert Plain(1) == Plain(1) and Plain.__hash__ is None     # mutable with eq: unhashable
    q = Plain(1)
    q.a = 2
    assert q.a == 2 and repr(q) == "Plain(a=2, b='b')"


def test_identity_records() -> None:
    b = Bag("a")
    assert b != Bag("a") and hash(b) == object.__hash__(b)
    assert "Bag object at" in repr(b)


def test_replace() -> None:
    p = Point(1, 2, ("a",))
    r = replace(p, y=7)
    assert (r.x, r.y, r.tags) == (1, 7, ("a",)) and p.y == 2
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)


def test_non_default_after_default_refused() -> None:
    with pytest.raises(TypeError, match="non-default argument 'b'"):
        @record
        class Bad:
            a: int = 0
            b: int
