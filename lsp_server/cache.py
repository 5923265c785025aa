"""Two caches that answer without a model call.

`ContextCache`: the model's raw fill keyed on the exact context (prefix, suffix, mode, budget),
so asking again at the same place is free. `TypeThrough`: the suggestion last shown in each
document; when the user types characters that match its start, the rest is still the answer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

_TAIL = 2048  # chars either side of the cursor that must be unchanged for a type-through hit


class ContextCache:
    """A small LRU from context keys to raw fills."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._data: OrderedDict[object, str] = OrderedDict()

    def get(self, key: object) -> str | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: object, value: str) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


@dataclass(frozen=True)
class _Shown:
    offset: int
    before: str
    after: str
    text: str


class TypeThrough:
    """The last suggestion shown per document, to serve the user typing through it."""

    def __init__(self) -> None:
        self._shown: dict[str, _Shown] = {}

    def remember(self, uri: str, text: str, offset: int, suggestion: str) -> None:
        if not suggestion:
            self._shown.pop(uri, None)
            return
        self._shown[uri] = _Shown(offset, text[max(0, offset - _TAIL):offset],
                                  text[offset:offset + _TAIL], suggestion)

    def lookup(self, uri: str, text: str, offset: int) -> str | None:
        """The rest of the shown suggestion if the text typed since matches its start."""
        shown = self._shown.get(uri)
        if shown is None or offset < shown.offset:
            return None
        typed = text[shown.offset:offset]
        if (not shown.text.startswith(typed) or len(typed) >= len(shown.text)
                or text[max(0, shown.offset - _TAIL):shown.offset] != shown.before
                or text[offset:offset + _TAIL] != shown.after):
            return None
        return shown.text[len(typed):]

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)
