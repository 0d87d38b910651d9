"""Name -> factory registries (backbones, losses, datasets, presets), one per concept.

An unknown name is a single clear error that lists every valid name.  Besides fixed names a
registry can hold *families* of names with a prefix (``timm:convnext_tiny``): `register_prefix`
maps the prefix to a resolver that turns the rest of the name into an item, or raises its own
error (one that suggests close names); `get` tries the fixed names first, then the families.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, Generic, Iterable, Iterator, Optional, TypeVar

from .errors import PamcError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._prefixes: Dict[str, tuple[Callable[[str], T], str]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def register_prefix(self, prefix: str, resolve: Callable[[str], T], help: str = "") -> None:
        """Names ``PREFIX:REST`` resolve to ``resolve(REST)`` (which raises PamcError for an unknown REST).

        `help` says how to name a member of the family (shown by `pamc list` and in errors)."""
        prefix = prefix.lower().rstrip(":")
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is registered twice")
        self._prefixes[prefix] = (resolve, help)

    def family(self, name: str) -> Optional[tuple[str, str]]:
        """(prefix, rest) if `name` belongs to a registered family, else None."""
        prefix, sep, rest = str(name).partition(":")
        return (prefix.lower(), rest.strip()) if sep and prefix.lower() in self._prefixes else None

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key in self._items:
            return self._items[key]
        member = self.family(name)
        if member is not None:
            prefix, rest = member
            if not rest:
                raise PamcError(f"{self.kind} {name!r} names no member of the {prefix!r} family; "
                                f"{self._prefixes[prefix][1] or f'write {prefix}:NAME'}")
            return self._prefixes[prefix][0](rest)
        families = [f"{p}:NAME ({h})" if h else f"{p}:NAME" for p, (_, h) in sorted(self._prefixes.items())]
        raise PamcError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names() + families)}")

    def names(self) -> list[str]:
        """The fixed names (families are listed by `families`)."""
        return sorted(self._items)

    def families(self) -> dict[str, str]:
        """prefix -> how to name a member, for each registered family."""
        return {p: h for p, (_, h) in sorted(self._prefixes.items())}

    def __contains__(self, name: str) -> bool:
        if str(name).lower() in self._items:
            return True
        if self.family(name) is None:
            return False
        try:
            self.get(name)
        except PamcError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The few `choices` nearest to a mistyped `name` (closest first), for an error that names them
    instead of listing every valid one; names that contain it or that it contains come first."""
    import difflib

    choices = list(choices)
    key = str(name).lower()
    near = [c for c in choices if key and (key in c.lower() or c.lower() in key)]
    near.sort(key=lambda c: (-difflib.SequenceMatcher(None, key, c.lower()).ratio(), c))
    near += [c for c in difflib.get_close_matches(key, choices, n=n, cutoff=0.5) if c not in near]
    return near[:n]


def check_keywords(factory: Callable, given: Iterable[str], what: str, noun: str, exclude: Iterable[str] = ()) -> None:
    """Refuse keywords `factory` does not take, as one error naming them and the valid ones,
    instead of a TypeError traceback deep in a run."""
    accepted = [p for p in inspect.signature(factory).parameters if p not in set(exclude)]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise PamcError(f"{what} takes no {noun} {', '.join(unknown)}; valid: {', '.join(accepted) or 'none'}")
