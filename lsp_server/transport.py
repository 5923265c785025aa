"""Byte streams to pygls: one `Session` per client, over stdio or one TCP connection at a time.

Replaces pygls's reader loop (`pygls.io_.run_async`) and nothing else; messages go through the
protocol's public `structure_message` / `handle_message`, replies through its writer.

- Framing is `lsp_server.framing`: bad input costs one error response (id null), never the
  session, and a body over the size cap is refused before it is read.
- JSON is parsed once per message; only the top-level object is structured, so a
  `{"jsonrpc", "id", "method"}` object nested in params is data, not a message.
- The lifecycle is the LSP's: requests before `initialize` get -32002, requests after
  `shutdown` get -32600, notifications before `initialize` are dropped, and `exit` ends the
  session with 0 after `shutdown`, 1 without. End of input ends it with 1 too.
- No traceback leaves the server: error responses are sent without `data`.
- A heavy `didChange` goes to the server's `offload` (applied off the event loop, in order).
- TCP serves one client. A second connection while one is active is told so and closed; the
  process ends with the session (documents and settings belong to the client that made them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from lsp_server.framing import MAX_BYTES, Frame, Framer, frame

log = logging.getLogger(__name__)
NOT_INITIALIZED, INVALID_REQUEST, INVALID_PARAMS, PARSE_ERROR = -32002, -32600, -32602, -32700
IDLE_S = 0.25  # a body still short of its length after this long is checked for being whole
LOOPBACK = ("127.0.0.1", "::1", "localhost")
Read = Callable[[], Awaitable[bytes]]


def error_body(msg_id: Any, code: int, message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}).encode()


class GuardedWriter:
    """The protocol's writer: whole framed messages to the stream; error responses lose `data`
    (pygls puts tracebacks there)."""

    def __init__(self, write: Callable[[bytes], Any], close: Callable[[], Any]) -> None:
        self._write, self._close = write, close

    def write(self, data: bytes) -> None:
        if b'"error"' in data:
            data = _strip_error_data(data)
        self._write(data)

    def close(self) -> None:
        self._close()


def _strip_error_data(data: bytes) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, body = b"", data
    try:
        msg = json.loads(body)
    except ValueError:
        return data
    if not isinstance(msg, dict) or not isinstance(msg.get("error"), dict) or "data" not in msg["error"]:
        return data
    del msg["error"]["data"]
    out = json.dumps(msg).encode()
    return frame(out) if head else out


class Session:
    """One client: frames in, the lifecycle gate, the pygls protocol."""

    def __init__(self, server: Any, write: Callable[[bytes], Any], close: Callable[[], Any] = lambda: None,
                 max_bytes: int = MAX_BYTES) -> None:
        self.server = server
        self.protocol = server.protocol
        self.framer = Framer(max_bytes)
        self._write = write
        self.state = "new"  # -> "initialized" -> "shutdown"
        # a server may take heavy notifications off the loop (`DlspServer.offload`)
        self._offload: Callable[[dict[str, Any], int], bool] | None = getattr(server, "offload", None)
        self.protocol.set_writer(GuardedWriter(write, close))

    def send_error(self, msg_id: Any, code: int, message: str) -> None:
        self._write(frame(error_body(msg_id, code, message)))

    async def run(self, read: Read) -> int:
        """Serve until `exit` or the end of input; returns the exit code the LSP asks for."""
        pending: asyncio.Future | None = None
        while True:
            if pending is None:
                pending = asyncio.ensure_future(read())
            done, _ = await asyncio.wait({pending}, timeout=IDLE_S)
            if not done:
                items = self.framer.idle()
            else:
                try:
                    data = pending.result()
                except (OSError, ValueError):
                    data = b""
                pending = None
                if not data:
                    log.info("the client closed the connection")
                    return 1
                items = self.framer.feed(data)
            for item in items:
                code = self.dispatch(item)
                if code is not None:
                    if pending is not None:
                        pending.cancel()
                    return code

    def dispatch(self, item: Any) -> int | None:
        """Handle one frame or framing error; an exit code when the session ends."""
        if not isinstance(item, Frame):
            log.warning("framing: %s", item.message)
            self.send_error(None, item.code, item.message)
            return None
        try:
            data = json.loads(item.body)
        except (ValueError, UnicodeDecodeError):
            log.info("a message that is not JSON")
            self.send_error(None, PARSE_ERROR, "parse error")
            return None
        return self._gate(data, len(item.body))

    def _gate(self, data: Any, size: int = 0) -> int | None:
        msg_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(msg_id, (str, int)) or isinstance(msg_id, bool):
            msg_id = None
        method = data.get("method") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("jsonrpc") != "2.0" or ("method" in data and not isinstance(method, str)):
            self.send_error(msg_id, INVALID_REQUEST, "not a JSON-RPC 2.0 message")
            return None
        is_request = method is not None and "id" in data
        if method == "exit":
            return 0 if self.state == "shutdown" else 1
        if is_request and self.state == "new" and method != "initialize":
            self.send_error(msg_id, NOT_INITIALIZED, "server not initialized")
            return None
        if is_request and self.state == "initialized" and method == "initialize":
            self.send_error(msg_id, INVALID_REQUEST, "already initialized")
            return None
        if is_request and self.state == "shutdown":
            self.send_error(msg_id, INVALID_REQUEST, "server is shutting down")
            return None
        if method is not None and not is_request and self.state == "new":
            log.info("dropping a notification before initialize")
            return None
        if method == "initialize":
            self.state = "initialized"
        elif method == "shutdown":
            self.state = "shutdown"
        if not is_request and self._offload is not None and self._offload(data, size):
            return None
        self._handle(data, msg_id if is_request else None)
        return None

    def _handle(self, data: dict[str, Any], msg_id: Any) -> None:
        try:
            message = self.protocol.structure_message(data)
        except Exception:  # params that do not fit the LSP types of the method
            method = str(data.get("method", ""))[:100]
            log.info("invalid params for %s", method)
            if msg_id is not None:
                self.send_error(msg_id, INVALID_PARAMS, f"invalid params for {method}")
            return
        try:
            self.protocol.handle_message(message)
        except Exception as exc:  # a handler that failed before it could answer
            log.warning("message failed: %s", type(exc).__name__)
            if msg_id is not None:
                self.send_error(msg_id, -32603, f"internal error: {type(exc).__name__}")


def _stdin_reader(stdin: BinaryIO) -> tuple[Read, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlsp-stdin")
    try:
        fd = stdin.fileno()
        chunk: Callable[[], bytes] = lambda: os.read(fd, 1 << 16)  # noqa: E731
    except (AttributeError, OSError, ValueError):
        chunk = lambda: stdin.read1(1 << 16)  # type: ignore[attr-defined]  # noqa: E731

    async def read() -> bytes:
        return await asyncio.get_running_loop().run_in_executor(pool, chunk)

    return read, pool


def serve_stdio(server: Any, stdin: BinaryIO, stdout: BinaryIO, max_bytes: int = MAX_BYTES) -> int:
    """Serve one client over a pipe pair; returns the exit code."""

    def write(data: bytes) -> None:
        stdout.write(data)
        stdout.flush()

    read, pool = _stdin_reader(stdin)

    async def main() -> int:
        server.loop = asyncio.get_running_loop()
        return await Session(server, write, stdout.close, max_bytes).run(read)

    try:
        return asyncio.run(main())
    except (BrokenPipeError, ConnectionError):
        log.warning("the connection to the client is lost")
        return 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def serve_tcp(server: Any, host: str, port: int, max_bytes: int = MAX_BYTES,
              on_listening: Callable[[list[Any]], None] | None = None) -> int:
    """Serve the first client that connects; others are refused while it is connected. Returns
    the session's exit code when it ends."""

    async def main() -> int:
        server.loop = asyncio.get_running_loop()
        finished: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        active: list[Session] = []

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if active or finished.done():
                log.warning("refused a second client: this server serves one client per process")
                note = {"jsonrpc": "2.0", "method": "window/showMessage", "params": {
                    "type": 1, "message": "dlsp: another client is connected to this server"}}
                writer.write(frame(json.dumps(note).encode()))
                writer.write(frame(error_body(None, INVALID_REQUEST, "another client is connected")))
                await _close(writer)
                return
            session = Session(server, writer.write, writer.close, max_bytes)
            active.append(session)
            code = 1
            try:
                code = await session.run(lambda: reader.read(1 << 16))
            except ConnectionError:
                log.warning("the connection to the client is lost")
            finally:
                await _close(writer)
                if not finished.done():
                    finished.set_result(code)

        listener = await asyncio.start_server(connection, host, port)
        if on_listening is not None:
            on_listening([s.getsockname() for s in listener.sockets])
        try:
            return await finished
        finally:
            listener.close()

    return asyncio.run(main())


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        if writer.can_write_eof():
            await writer.drain()
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)
    except (OSError, asyncio.TimeoutError, ConnectionError):
        pass
