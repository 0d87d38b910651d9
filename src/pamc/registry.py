"""Name -> factory registries (backbones, losses, datasets, presets), one per concept.

An unknown name is a single clear error that lists every valid name.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, Generic, Iterable, Iterator, TypeVar

from .errors import PamcError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            raise PamcError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def check_keywords(factory: Callable, given: Iterable[str], what: str, noun: str, exclude: Iterable[str] = ()) -> None:
    """Refuse keywords `factory` does not take, as one error naming them and the valid ones,
    instead of a TypeError traceback deep in a run."""
    accepted = [p for p in inspect.signature(factory).parameters if p not in set(exclude)]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise PamcError(f"{what} takes no {noun} {', '.join(unknown)}; valid: {', '.join(accepted) or 'none'}")
