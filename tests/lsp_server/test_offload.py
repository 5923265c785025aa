"""Heavy `didChange` notifications leave the event loop (issue 12): the real server and its
transport session in process, fed framed messages, with a fake engine."""

from __future__ import annotations

import asyncio
import json

from lsp_server.framing import Frame
from lsp_server.server import HEAVY_CHANGES, create_server
from lsp_server.settings import Settings
from lsp_server.transport import Session
from tests.lsp_server.fakes import FakeEngine

URI = "file:///w/big.py"


def _msg(method, params, msg_id=None):
    body = {"jsonrpc": "2.0", "method": method, "params": params}
    if msg_id is not None:
        body["id"] = msg_id
    return Frame(json.dumps(body).encode())


def _insert(line, text):
    pos = {"line": line, "character": 0}
    return {"range": {"start": pos, "end": pos}, "text": text}


def test_heavy_change_applies_off_the_loop_in_order_with_later_changes():
    text = "x = 1\n" * 3000
    heavy = [_insert(line, "#") for line in range(600, 0, -3)]  # 200 ranges, bottom-up
    assert len(heavy) > HEAVY_CHANGES
    sent: list[bytes] = []

    async def main():
        ls = create_server(loader=lambda path, device: FakeEngine(), settings=Settings(debounce_ms=0))
        ls.loop = asyncio.get_running_loop()
        session = Session(ls, sent.append)
        session.dispatch(_msg("initialize", {"capabilities": {}}, 1))
        session.dispatch(_msg("textDocument/didOpen", {"textDocument": {
            "uri": URI, "languageId": "python", "version": 1, "text": text}}))
        session.dispatch(_msg("textDocument/didChange", {"textDocument": {"uri": URI, "version": 2},
                                                         "contentChanges": heavy}))
        docs = ls.service.docs
        assert docs.busy(URI)  # taken off the loop
        # a small change right behind it: positions refer to the text after the heavy one
        session.dispatch(_msg("textDocument/didChange", {"textDocument": {"uri": URI, "version": 3},
                                                         "contentChanges": [_insert(3, "A")]}))
        session.dispatch(_msg("textDocument/didChange", {"textDocument": {"uri": URI, "version": 4},
                                                         "contentChanges": [{"nope": 1}] * 40}))  # malformed: dropped
        await docs.settled(URI)
        doc = docs.get(URI)
        want = "".join(("A#" if i == 3 else "#" if i % 3 == 0 and 0 < i <= 600 else "") + "x = 1\n"
                       for i in range(3000))
        assert doc.version == 3 and doc.text == want, "the changes did not apply in arrival order"
        ls.close()

    asyncio.run(main())
