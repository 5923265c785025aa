"""The LSP base protocol's framing (`Content-Length: N\\r\\n\\r\\n` + N bytes of body), read so
that one bad message never costs more than itself. Works on bytes only (no I/O, no JSON).

pygls's reader trusts every header: after a `Content-Length` a few bytes off (a client counting
characters instead of UTF-8 bytes) it reads every later header from the middle of a body and
never answers again, and a huge length is allocated before it is read. Here:

- a header block must start where the previous body ended; when it does not (the previous length
  was too short), or a body runs into the next header (too long), the body is cut where the next
  `Content-Length: <digits>\\r\\n` starts. That byte sequence cannot occur inside a JSON body
  (raw CR/LF are not allowed in JSON strings and the name is not a JSON token), so a cut never
  splits a well-formed message;
- a declared length that is still waited for when the client goes quiet is not waited for if the
  bytes already received are a whole JSON value (`idle`);
- a header block without a usable length, or a length over `max_bytes`, is reported and skipped,
  and reading resumes at the next `Content-Length` header. Nothing is ever buffered beyond
  `max_bytes` plus one header block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_BYTES = 64 << 20  # the largest body accepted (a 5 MB document fits many times over)
MAX_HEADER = 8192  # the largest header block accepted
_NEXT = re.compile(rb"content-length[ \t]*:[ \t]*\d+[ \t]*\r?\n", re.I)
_HEADER_START = re.compile(rb"content-(length|type)[ \t]*:", re.I)  # the LSP's only headers
_NAMES = (b"content-length:", b"content-type:")
_BLANK = re.compile(rb"\r?\n\r?\n")
_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\S*)[ \t]*$", re.I | re.M)
_KEEP = 32  # bytes kept when resynchronizing without a header in sight (a header may be split)


@dataclass(frozen=True)
class FramingError:
    """Input that is not a message; `code` is the JSON-RPC error to report (with id null)."""

    message: str
    code: int = -32700


@dataclass(frozen=True)
class Frame:
    body: bytes


class Framer:
    """Feed bytes in, get frames (bodies) and framing errors out, in stream order."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skipping = False  # inside garbage: report it once, when the next header is found
        self._scanned = 0  # bytes of the buffer already searched for a next header

    def feed(self, data: bytes) -> list[Frame | FramingError]:
        self._buf += data
        out: list[Frame | FramingError] = []
        while (item := self._next()) is not None:
            out.append(item)
        return out

    def idle(self) -> list[Frame | FramingError]:
        """The client went quiet: a body still short of its declared length is taken as it is
        when it already holds a whole JSON value (the declared length was too long)."""
        head = self._header()
        if self._skipping or head is None or isinstance(head, FramingError):
            return []
        start, _ = head
        body = bytes(self._buf[start:])
        if not body.strip() or not _is_json(body):
            return []
        del self._buf[:]
        self._scanned = 0
        return [Frame(body)]

    # -- internals ----------------------------------------------------------------------------
    def _resync(self, start: int = 0) -> FramingError | None:
        """Drop bytes up to the next length header at or after `start` (all but a tail if none)."""
        self._scanned = 0
        m = _NEXT.search(self._buf, start)
        cut = m.start() if m else max(start, len(self._buf) - _KEEP)
        del self._buf[:cut]
        if m is None:
            self._skipping = True
            return None
        if self._skipping or cut:
            self._skipping = False
            return FramingError("skipped bytes that were not a message (bad Content-Length?)")
        return None

    def _header(self) -> tuple[int, int] | FramingError | None:
        """(body start, declared length) of the header block at the buffer's start."""
        blank = _BLANK.search(self._buf, 0, MAX_HEADER + 4)
        if blank is None:
            if len(self._buf) > MAX_HEADER:
                return FramingError("header block too long")
            return None
        block = bytes(self._buf[:blank.start()])
        m = _LENGTH.search(block)
        if m is None:
            return FramingError("message without a Content-Length header")
        try:
            length = int(m.group(1))
        except ValueError:
            return FramingError(f"bad Content-Length: {m.group(1)[:40]!r}")
        if length < 0:
            return FramingError("negative Content-Length")
        if length > self.max_bytes:
            return FramingError(f"message too large: {length} bytes (the limit is {self.max_bytes})", -32600)
        return blank.end(), length

    def _next(self) -> Frame | FramingError | None:
        if not self._buf:
            return None
        starts = _header_at(self._buf, 0)
        if starts is None and not self._skipping:
            return None  # too few bytes to tell
        if not starts or self._skipping:
            err = self._resync()
            if err is not None or not self._buf or self._skipping:
                return err
        head = self._header()
        if head is None:
            return None
        if isinstance(head, FramingError):  # skip this header block, look for the next one
            self._resync(1)
            return head
        start, length = head
        end = start + length
        following = _NEXT.search(self._buf, start, min(len(self._buf), end + 64))
        if following is not None and following.start() < end:  # the declared length runs into the next message
            end = following.start()
        elif len(self._buf) < end:
            return None  # wait for the rest of the body
        elif len(self._buf) > end and _header_at(self._buf, end) is False:
            nxt = _NEXT.search(self._buf, end)  # the declared length was too short
            end = nxt.start() if nxt else len(self._buf)
        body = bytes(self._buf[start:end])
        del self._buf[:end]
        self._scanned = 0
        return Frame(body)


def _header_at(buf: bytearray, pos: int) -> bool | None:
    """Whether a header starts at `pos`; None while the bytes there could still become one."""
    if _HEADER_START.match(buf, pos):
        return True
    head = bytes(buf[pos:pos + 16]).lower()
    return None if any(name.startswith(head) for name in _NAMES) else False


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def frame(body: bytes) -> bytes:
    """One framed message."""
    return b"Content-Length: %d\r\n\r\n" % len(body) + body
