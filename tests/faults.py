"""Store wrappers that inject faults: a crash after k mutating calls, or one store going down."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlm_core.ports import StoreError
from rlm_core.stores import Stores

MUTATIONS = frozenset(
    {
        "delete_for_documents",
        "delete_for_pairs",
        "unlink",
        "unlink_idle",
        "expire_if_persistent",
        "remove",
        "delete_documents",
        "touch_document",
        "relink_document",
    }
)
STORE_NAMES = ("cache", "vectors", "objects", "metadata")


class Crash(BaseException):
    """Stands for the process dying mid-sweep (a BaseException: nothing may swallow it)."""


@dataclass
class FaultPlan:
    """crash_after: mutating calls let through before Crash (None = never).
    down: the store that fails; down_after: its calls that still succeed first."""

    crash_after: int | None = None
    down: str | None = None
    down_after: int = 0
    injected: list[str] = field(default_factory=list)
    _mutations: int = 0
    _calls: int = 0

    def before(self, store: str, name: str) -> None:
        if self.down == store:
            if self._calls >= self.down_after:
                self.injected.append(f"outage:{store}.{name}")
                raise StoreError(f"injected outage of the {store} store during {name}")
            self._calls += 1
        if self.crash_after is not None and name in MUTATIONS:
            if self._mutations >= self.crash_after:
                self.injected.append(f"crash:{store}.{name}")
                raise Crash(f"{store}.{name}")
            self._mutations += 1


class _Faulty:
    """Proxy over one adapter that consults the plan before every method call."""

    def __init__(self, inner: Any, store: str, plan: FaultPlan) -> None:
        self._inner = inner
        self._store = store
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._plan.before(self._store, name)
            return attr(*args, **kwargs)

        return guarded


def faulty(stores: Stores, plan: FaultPlan) -> Stores:
    """Stores whose adapters obey the plan; closing it never closes the real adapters."""
    return Stores(
        lambda: _Faulty(stores.cache(), "cache", plan),  # type: ignore[arg-type,return-value]
        lambda: _Faulty(stores.vectors(), "vectors", plan),  # type: ignore[arg-type,return-value]
        lambda: _Faulty(stores.objects(), "objects", plan),  # type: ignore[arg-type,return-value]
        lambda: _Faulty(stores.metadata(), "metadata", plan),  # type: ignore[arg-type,return-value]
    )
