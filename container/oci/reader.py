"""Strict reading of a JSON document: every key is taken by name and type,
and a key nobody took is refused, so nothing in a config is silently
ignored.  Errors name the key by its path in the document."""

from __future__ import annotations

from typing import Any, Callable


class ConfigError(ValueError):
    """A config the runtime refuses; the message is one line."""


_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "an object", float: "a number"}


class Reader:
    """The keys of one JSON object found at ``where`` (e.g. ``linux.seccomp``)."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be an object")
        self._data, self._where, self._taken = data, where, set()

    def path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def take(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        """The value of ``key``, which must be of ``kind``; ``default`` when
        it is absent or null (a key without a default is required)."""
        self._taken.add(key)
        value = self._data.get(key)
        if value is None:
            if default is _MISSING:
                raise ConfigError(f"{self.path(key)}: required")
            return default
        if not _is(value, kind):
            raise ConfigError(f"{self.path(key)}: must be {_TYPE_NAMES[kind]}")
        return value

    def take_list(self, key: str, kind: type) -> list:
        """A list (empty when absent) whose items are all of ``kind``."""
        items = self.take(key, list, [])
        for index, item in enumerate(items):
            if not _is(item, kind):
                raise ConfigError(f"{self.path(key)}[{index}]: must be {_TYPE_NAMES[kind]}")
        return items

    def take_object(self, key: str) -> Reader | None:
        """A nested object's reader; None when absent."""
        value = self.take(key, dict, None)
        return None if value is None else Reader(value, self.path(key))

    def take_objects(self, key: str, parse: Callable[[Reader], Any]) -> tuple:
        """A list of objects, each read by ``parse`` (which must call
        :meth:`done`)."""
        items = self.take(key, list, [])
        return tuple(parse(Reader(item, f"{self.path(key)}[{index}]"))
                     for index, item in enumerate(items))

    def refuse(self, key: str, why: str = "not supported") -> None:
        """Refuse ``key`` when it is present with a value that means
        something (not null, empty or false)."""
        self._taken.add(key)
        if self._data.get(key) not in (None, "", [], {}, False, 0):
            raise ConfigError(f"{self.path(key)}: {why}")

    def done(self) -> None:
        """Refuse any key no one took."""
        unknown = sorted(set(self._data) - self._taken)
        if unknown:
            raise ConfigError(f"{self.path(unknown[0])}: not supported")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path(key)}: {message}")


def _is(value: Any, kind: type) -> bool:
    if kind is int:  # JSON's true and false are not numbers
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)
