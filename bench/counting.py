"""Request counters: a urllib3 PoolManager for the minio client, a proxy for any store/client."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import urllib3


class CountingPoolManager(urllib3.PoolManager):
    """Counts every HTTP request the minio client sends, by kind."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts: Counter[str] = Counter()

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        self.counts[_kind(method, url)] += 1
        return super().urlopen(method, url, redirect=redirect, **kw)


def _kind(method: str, url: str) -> str:
    query = url.partition("?")[2]
    if method == "GET" and "list-type=2" in query:
        return "list"
    if method == "GET" and "location" in query:
        return "bucket_location"
    if method == "POST" and query.startswith("delete"):
        return "delete_batch"
    if method == "HEAD":
        return "stat"
    if method == "DELETE":
        return "delete_one"
    return f"{method.lower()}_other"


class CountingProxy:
    """Wraps an object; counts calls (and their seconds) of its public methods by name."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return counted
