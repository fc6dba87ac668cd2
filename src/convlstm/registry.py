"""One registry idiom for everything looked up by name: models, datasets and baselines.

A :class:`Registry` maps normalised names (case-insensitive, ``-`` equal to ``_``, surrounding
spaces ignored: :func:`normalise_name`) to entries: model configurations
(:func:`convlstm.models.register_model`), dataset factories
(:func:`convlstm.data.register_dataset`) and forecasters
(:func:`convlstm.baselines.register_baseline`). It imports nothing heavy: ``import convlstm``
stays fast.

>>> from convlstm.registry import Registry
>>> colours = Registry("colour", {"dark-red": "#8b0000"})
>>> colours.get("Dark_Red"), "DARK-RED" in colours, colours.names()
('#8b0000', True, ['dark_red'])
>>> colours.get("blue")
Traceback (most recent call last):
...
ValueError: unknown colour 'blue'; valid colours: dark_red
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry", "normalise_name"]

T = TypeVar("T")


def normalise_name(name: str, kind: str = "name") -> str:
    """``name`` as registries store it: stripped, lower-case, ``-`` replaced by ``_``.

    Args:
        name: the name to normalise.
        kind: what is named, for the error message (``"model"``, ``"dataset"``, ...).

    Raises:
        TypeError: ``name`` is not a string.

    >>> normalise_name(" Moving-MNIST ")
    'moving_mnist'
    """
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
    return name.strip().lower().replace("-", "_")


class Registry(Generic[T]):
    """Entries of one kind, looked up by normalised name.

    Args:
        kind: what the entries are, singular (``"model"``), for messages.
        entries: the initial entries, ``{name: entry}``; names are normalised.
        valid: the word before the list of valid names in the unknown-name message
            (``"valid <valid>: a, b"``); the plural of ``kind`` by default.
        sort: list names sorted; ``False`` lists them in the order they were registered.
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        *,
        valid: str | None = None,
        sort: bool = True,
    ) -> None:
        self.kind = kind
        self._valid = valid or f"{kind}s"
        self._sort = sort
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    def register(self, name: str, entry: T, *, overwrite: bool = False) -> str:
        """Add ``entry`` as ``name``; return the normalised name.

        Raises:
            TypeError: ``name`` is not a string.
            ValueError: ``name`` is empty, or taken and ``overwrite`` is false.
        """
        key = normalise_name(name, self.kind)
        if not key:
            raise ValueError(f"{self.kind} name must not be empty")
        if key in self._entries and not overwrite:
            raise ValueError(
                f"{self.kind} {key!r} is already registered; pass overwrite=True to replace it"
            )
        self._entries[key] = entry
        return key

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry.

        Raises:
            ValueError: unknown name (the message lists the valid ones).
        """
        entry = self.get(name)
        del self._entries[normalise_name(name, self.kind)]
        return entry

    def get(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            TypeError: ``name`` is not a string.
            ValueError: unknown name (the message lists the valid ones).
        """
        key = normalise_name(name, self.kind)
        if key not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self._valid}: {', '.join(self.names())}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        """The registered names, sorted (or in the order they were registered, see ``sort``)."""
        return sorted(self._entries) if self._sort else list(self._entries)

    def copy(self) -> Registry[T]:
        """A registry of the same kind and entries, changed independently of this one."""
        return Registry(self.kind, self._entries, valid=self._valid, sort=self._sort)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_name(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
