"""A name → entry table filled by decorators (as timm registers models).

Training methods, teacher saliency methods and dataset layouts each keep one ``Registry``; CLI
choices, help text, validation and test parametrisation all read it, so adding an entry touches
the one file that defines it. Imports only ``errors`` of the project (a leaf, as ``writers/`` may import it).
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "training method", "saliency method", "dataset" (for messages)
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry, or an InputError listing every registered name."""
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self)}") from None

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def help(self) -> str:
        """'name: description; …' for --help texts (entries carry a ``description``)."""
        return "; ".join(f"{name}: {getattr(e, 'description', '')}" for name, e in self._entries.items())
