"""Batching: one helper for every store call that takes a bounded number of items at once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of at most `size` items, streaming."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
