"""Keyset pagination for every list endpoint: an opaque cursor naming the last row's sort key,
so a page costs the same wherever it starts and rows added meanwhile are neither skipped nor
repeated (offsets would do both)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.errors import RuleViolation

T = TypeVar("T")
_BAD = "cursor is not one this API returned; start without it"


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(values: Sequence[Any]) -> str:
    """Datetimes, ints and strings, newest first order or not: the cursor only names them."""
    raw = [{"t": v.astimezone(UTC).isoformat()} if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str, types: Sequence[type]) -> list[Any]:
    """The values of ``encode_cursor``, checked against the expected ``types``; a cursor this
    API did not return is a 422 problem, never a 500."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(raw, list) or len(raw) != len(types):
            raise ValueError("wrong shape")
        out: list[Any] = []
        for value, kind in zip(raw, types, strict=True):
            if kind is datetime:
                moment = datetime.fromisoformat(value["t"])
                if moment.tzinfo is None:
                    raise ValueError("naive time")
                out.append(moment.astimezone(UTC))
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("not an int")
                # cursor ints are row ids, Integer keys: 32-bit on PostgreSQL, so a larger
                # one is refused alike on both backends rather than a DataError on one
                if not -(2**31) <= value < 2**31:
                    raise ValueError("out of range")
                out.append(value)
            elif isinstance(value, kind):
                out.append(value)
            else:
                raise ValueError(f"not a {kind.__name__}")
        return out
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise RuleViolation(_BAD) from exc


def after(columns: Sequence[InstrumentedAttribute[Any]], values: Sequence[Any]) -> Any:
    """Rows strictly after ``values`` in descending order of ``columns`` (the last one unique,
    e.g. the id): (a < x) or (a = x and b < y) ..."""
    terms = []
    for i, column in enumerate(columns):
        equal = [c == v for c, v in zip(columns[:i], values[:i], strict=True)]
        terms.append(and_(*equal, column < values[i]))
    return or_(*terms)


def page_of(
    session: Session,
    query: Select[Any],
    columns: Sequence[InstrumentedAttribute[Any]],
    *,
    cursor: str | None,
    limit: int,
) -> tuple[list[Any], str | None]:
    """One page of ``query`` (ORM entities), newest first by ``columns``, and the cursor of the
    next page (None on the last)."""
    query = query.order_by(*(c.desc() for c in columns))
    if cursor:
        query = query.where(after(columns, decode_cursor(cursor, _types(columns))))
    rows = list(session.scalars(query.limit(limit + 1)))
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_cursor([getattr(page[-1], c.key) for c in columns]) if more else None
    return page, next_cursor


def _types(columns: Sequence[InstrumentedAttribute[Any]]) -> list[type]:
    # A TypeDecorator (UtcDateTime) answers for its implementation type.
    return [getattr(c.type, "impl_instance", c.type).python_type for c in columns]
