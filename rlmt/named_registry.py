"""A registry of named things (algorithms, reward kinds): add once by name, look up with a clear error.

Both ``rlmt.algorithms`` and ``rlmt.rewards.registry`` keep one; a name may be added once, and looking up
an unknown name says which names exist. Registration order is kept (the config's field and union order).
Imports nothing.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class NamedRegistry(Generic[T]):
    """Things of one sort (`what`, e.g. ``"algorithm"``) by their ``name``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Add `item` under its name; a second item of the same name is an error."""
        if item.name in self._items:
            raise ValueError(f"{self.what} {item.name!r} is already registered")
        self._items[item.name] = item
        return item

    def get(self, name: str) -> T:
        """The item registered as `name`."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; registered: {sorted(self._items)}") from None

    def all(self) -> tuple[T, ...]:
        """Every item, in registration order."""
        return tuple(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items
