"""Store wrappers for fault injection and interleavings.

`hooked(stores, hook)` runs `hook(store, method, phase)` before and after every store call (and
around every page a store's iterator fetches), so a test can crash, take a store down or run an
app write at any point between two store calls. Every call is recorded, in order, so a test can
enumerate the points of an undisturbed run and then re-run with something injected at each one.
`FaultPlan` is such a hook: a crash before or after the k-th mutating call, or one store down.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from rlm_core.ports import StoreError
from rlm_core.stores import Stores

Phase = Literal["before", "after"]
Hook = Callable[[str, str, Phase], None]

# The store-port methods that change a store. The names of the former ports stay listed (they
# match nothing on the current ports) so a plan means the same on either.
MUTATIONS = frozenset(
    {
        # cache
        "unlink",
        "unlink_idle",
        "expire_if_persistent",
        # vectors
        "delete_for_documents",
        "delete_points",
        "delete_for_pairs",
        # objects
        "remove",
        # metadata
        "delete_documents",
        "claim_documents",
        "release_claims",
        "touch_document",
        "relink_document",
        "insert_document",
    }
)
STORE_NAMES = ("cache", "vectors", "objects", "metadata")
PAGE = ":page"


class Crash(BaseException):
    """Stands for the process dying mid-sweep (a BaseException: nothing may swallow it)."""


@dataclass
class Call:
    """One store call as the wrapper saw it; a page of an iterator is a call of its own,
    named `method:page` (its result is the page, None for the fetch that found the end)."""

    store: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    raised: BaseException | None = None
    done: bool = False

    @property
    def name(self) -> str:
        """`store.method`, e.g. `metadata.claim_documents` or `vectors.iter_points:page`."""
        return f"{self.store}.{self.method}"

    @property
    def mutating(self) -> bool:
        """Whether the call changes its store."""
        return self.method in MUTATIONS


class _Tapped:
    """Proxy over one adapter: logs every method call and runs the hook around it."""

    def __init__(self, inner: Any, store: str, hook: Hook, log: list[Call]) -> None:
        self._inner = inner
        self._store = store
        self._hook = hook
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def tapped(*args: Any, **kwargs: Any) -> Any:
            result = self._run(name, lambda: attr(*args, **kwargs), args, kwargs)
            if isinstance(result, Iterator):
                return self._pages(name, result)
            return result

        return tapped

    def _run(
        self, method: str, call: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        record = Call(self._store, method, args, kwargs)
        self._log.append(record)
        self._hook(self._store, method, "before")
        try:
            record.result = call()
        except BaseException as exc:
            record.raised = exc
            raise
        finally:
            record.done = True
        self._hook(self._store, method, "after")
        return record.result

    def _pages(self, method: str, pages: Iterator[Any]) -> Iterator[Any]:
        # Each fetch of an iterator reaches the store (a SCAN step, a scroll page, a cursor
        # batch): each is a point where the app may write.
        end = object()
        try:
            while True:
                page = self._run(method + PAGE, lambda: next(pages, end), (), {})
                if page is end:
                    self._log[-1].result = None
                    return
                yield page
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()


def hooked(stores: Stores, hook: Hook, log: list[Call] | None = None) -> Stores:
    """Stores whose every call runs `hook(store, method, phase)` around it and is appended to
    `log`; closing them never closes the real adapters."""
    calls: list[Call] = [] if log is None else log
    return Stores(
        lambda: _Tapped(stores.cache(), "cache", hook, calls),
        lambda: _Tapped(stores.vectors(), "vectors", hook, calls),
        lambda: _Tapped(stores.objects(), "objects", hook, calls),
        lambda: _Tapped(stores.metadata(), "metadata", hook, calls),
        owned=False,
    )


def recorded(stores: Stores, log: list[Call]) -> Stores:
    """Stores that only record their calls (an undisturbed run)."""
    return hooked(stores, lambda store, method, phase: None, log)


@dataclass
class FaultPlan:
    """A hook that injects one fault.

    crash_after=k: the counted calls are numbered 0, 1, ...; call k is the crash point. With
    when="before" the process dies before call k reaches the store; with when="after" call k
    runs to completion and the process dies before its caller sees the result.
    on: the "store.method" names counted (default: every mutating call of MUTATIONS).
    dead: after the crash no later call reaches a store either (the cleanup's `finally` blocks
    cannot release leases or claims): the stores stay exactly as a killed process leaves them.
    down: the store that fails with StoreError; down_after: its calls that still succeed first.
    """

    crash_after: int | None = None
    when: Phase = "before"
    on: Collection[str] | None = None
    dead: bool = False
    down: str | None = None
    down_after: int = 0
    injected: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    counted: int = 0
    _store_calls: int = 0
    _current: int = -1

    def __call__(self, store: str, method: str, phase: Phase) -> None:
        if self.dead and phase == "before" and any(i.startswith("crash") for i in self.injected):
            raise Crash(f"dead before {store}.{method}")
        if phase == "before" and self.down == store:
            if self._store_calls >= self.down_after:
                self.injected.append(f"outage:{store}.{method}")
                raise StoreError(f"injected outage of the {store} store during {method}")
            self._store_calls += 1
        if self.crash_after is None or not self._counts(store, method):
            return
        if phase == "before":
            self._current = self.counted
            self.counted += 1
        if self._current == self.crash_after and phase == self.when:
            self.injected.append(
                f"{'crash' if phase == 'before' else 'crash-after'}:{store}.{method}"
            )
            raise Crash(f"{phase} {store}.{method}")

    def _counts(self, store: str, method: str) -> bool:
        if self.on is None:
            return method in MUTATIONS
        return f"{store}.{method}" in self.on


def chain(*hooks: Hook) -> Hook:
    """One hook that runs several, in order."""

    def run(store: str, method: str, phase: Phase) -> None:
        for hook in hooks:
            hook(store, method, phase)

    return run


def faulty(stores: Stores, plan: FaultPlan) -> Stores:
    """Stores whose adapters obey the plan (and record their calls in `plan.calls`)."""
    return hooked(stores, plan, plan.calls)


@dataclass
class OnCall:
    """A hook that runs `action` once, at `phase` of the `nth` (0-based) call of store.method."""

    store: str
    method: str
    nth: int
    action: Callable[[], object]
    phase: Phase = "before"
    seen: int = 0
    fired: int = 0

    def __call__(self, store: str, method: str, phase: Phase) -> None:
        if (store, method) != (self.store, self.method) or phase != self.phase:
            return
        if self.seen == self.nth:
            self.fired += 1
            self.action()
        self.seen += 1
