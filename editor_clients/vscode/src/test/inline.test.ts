import * as assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  convertInlineResult, fromUtf16Column, itemsOf, parseEncoding, textDocumentView, toDocumentPosition,
  toServerPosition, toUtf16Column,
} from "../inline";

// "a😀b": 'a' (1 unit), U+1F600 (2 UTF-16 units, 4 UTF-8 bytes, 1 code point), 'b'.
const EMOJI = "a\u{1F600}b";
// "é" is 2 UTF-8 bytes, 1 UTF-16 unit.
const ACCENT = "café = 1";

describe("column conversion", () => {
  it("is the identity for UTF-16 inside the line and clamps past the end", () => {
    for (let c = 0; c <= 4; c++) assert.equal(toUtf16Column(EMOJI, c, "utf-16"), c === 2 ? 1 : c);
    assert.equal(toUtf16Column(EMOJI, 99, "utf-16"), 4);
    assert.equal(toUtf16Column(EMOJI, -3, "utf-16"), 0);
  });

  it("rounds a column inside a surrogate pair down to the pair's start", () => {
    assert.equal(toUtf16Column(EMOJI, 2, "utf-16"), 1);
    assert.equal(fromUtf16Column(EMOJI, 2, "utf-8"), 1);
    assert.equal(fromUtf16Column(EMOJI, 2, "utf-32"), 1);
  });

  it("converts UTF-8 and UTF-32 columns", () => {
    assert.equal(toUtf16Column(EMOJI, 5, "utf-8"), 3);  // after the emoji: 1 + 4 bytes
    assert.equal(toUtf16Column(EMOJI, 6, "utf-8"), 4);
    assert.equal(toUtf16Column(EMOJI, 3, "utf-8"), 1);  // inside the emoji's bytes
    assert.equal(toUtf16Column(EMOJI, 2, "utf-32"), 3);
    assert.equal(toUtf16Column(ACCENT, 5, "utf-8"), 4);  // "café" is 5 bytes
    assert.equal(fromUtf16Column(ACCENT, 4, "utf-8"), 5);
    assert.equal(fromUtf16Column(EMOJI, 3, "utf-8"), 5);
    assert.equal(fromUtf16Column(EMOJI, 3, "utf-32"), 2);
  });

  it("round-trips every code point boundary", () => {
    const line = "x\u{1F600}é\u{10348}y";
    for (const enc of ["utf-8", "utf-16", "utf-32"] as const) {
      for (let u16 = 0; u16 <= line.length; u16++) {
        const inPair = u16 > 0 && /[\ud800-\udbff]/.test(line[u16 - 1]);
        if (inPair) continue;
        assert.equal(toUtf16Column(line, fromUtf16Column(line, u16, enc), enc), u16, `${enc} @${u16}`);
      }
    }
  });

  it("clamps positions into the document", () => {
    const doc = textDocumentView("ab\ncd");
    assert.deepEqual(toDocumentPosition(doc, { line: 7, character: 0 }, "utf-16"), { line: 1, character: 2 });
    assert.deepEqual(toDocumentPosition(doc, { line: -1, character: 5 }, "utf-16"), { line: 0, character: 0 });
    assert.deepEqual(toDocumentPosition(doc, { line: 0, character: 10 }, "utf-16"), { line: 0, character: 2 });
    assert.deepEqual(toServerPosition(textDocumentView(ACCENT), { line: 0, character: 4 }, "utf-8"),
      { line: 0, character: 5 });
  });

  it("reads the negotiated encoding, defaulting to UTF-16", () => {
    assert.equal(parseEncoding("utf-8"), "utf-8");
    assert.equal(parseEncoding(undefined), "utf-16");
    assert.equal(parseEncoding("latin-1"), "utf-16");
  });
});

describe("convertInlineResult", () => {
  const doc = textDocumentView("def add(a, b):\n    return a\n");
  const cursor = { line: 1, character: 12 };

  it("accepts a list, a bare array, and nothing", () => {
    const item = { insertText: " + b", range: { start: cursor, end: cursor } };
    assert.equal(convertInlineResult({ items: [item] }, cursor, doc).items.length, 1);
    assert.equal(convertInlineResult([item], cursor, doc).items.length, 1);
    assert.deepEqual(convertInlineResult(null, cursor, doc), { items: [], dropped: [] });
    assert.deepEqual(convertInlineResult({ items: [] }, cursor, doc), { items: [], dropped: [] });
    assert.deepEqual(itemsOf(undefined), []);
  });

  it("keeps the server's empty range at the cursor and the text as is", () => {
    const r = convertInlineResult({ items: [{ insertText: " + b", range: { start: cursor, end: cursor } }] },
      cursor, doc);
    assert.deepEqual(r.items, [{ insertText: " + b", snippet: false, range: { start: cursor, end: cursor } }]);
  });

  it("uses the cursor when an item has no range", () => {
    const r = convertInlineResult({ items: [{ insertText: " + b" }] }, cursor, doc);
    assert.deepEqual(r.items[0].range, { start: cursor, end: cursor });
  });

  it("drops empty items and reports why", () => {
    const r = convertInlineResult({ items: [{ insertText: "" }, { insertText: { kind: "snippet", value: "" } }] },
      cursor, doc);
    assert.deepEqual(r.items, []);
    assert.deepEqual(r.dropped, ["empty", "empty"]);
  });

  it("drops items whose range is elsewhere or spans lines", () => {
    const r = convertInlineResult({ items: [
      { insertText: "x", range: { start: { line: 0, character: 0 }, end: { line: 0, character: 0 } } },
      { insertText: "x", range: { start: { line: 1, character: 0 }, end: { line: 1, character: 4 } } },
      { insertText: "x", range: { start: { line: 0, character: 3 }, end: cursor } },
    ] }, cursor, doc);
    assert.deepEqual(r.items, []);
    assert.deepEqual(r.dropped, ["range does not contain the cursor", "range does not contain the cursor",
      "multi-line range"]);
  });

  it("reads an earlier insertion as replacing what was typed since, and drops a stale one", () => {
    // The server answered for column 11 ("return |") and the user has since typed "a".
    const start = { line: 1, character: 11 };
    const fresh = { insertText: "a + b", range: { start, end: start } };
    const stale = { insertText: "b + a", range: { start, end: start } };
    const r = convertInlineResult({ items: [fresh, stale] }, cursor, doc);
    assert.deepEqual(r.items.map((i) => i.insertText), ["a + b"]);
    assert.deepEqual(r.items[0].range, { start, end: cursor });
    assert.deepEqual(r.dropped, ["stale: typed text does not match"]);
  });

  it("checks a replacement range against its filterText", () => {
    const start = { line: 1, character: 11 };
    const r = convertInlineResult({ items: [
      { insertText: "a + b", range: { start, end: cursor } },
      { insertText: "(a) + b", filterText: "a + b", range: { start, end: cursor } },
      { insertText: "b + a", range: { start, end: cursor } },
    ] }, cursor, doc);
    assert.deepEqual(r.items.map((i) => i.insertText), ["a + b", "(a) + b"]);
    assert.deepEqual(r.dropped, ["stale: typed text does not match"]);
  });

  it("does not extend an insertion on another line", () => {
    const r = convertInlineResult({ items: [{ insertText: "x", range: { start: { line: 0, character: 3 },
      end: { line: 0, character: 3 } } }] }, cursor, doc);
    assert.deepEqual(r.dropped, ["range does not contain the cursor"]);
  });

  it("drops an item that would change nothing", () => {
    const start = { line: 1, character: 11 };
    const r = convertInlineResult({ items: [{ insertText: "a", range: { start, end: cursor } }] }, cursor, doc);
    assert.deepEqual(r, { items: [], dropped: ["no change"] });
  });

  it("converts ranges after non-BMP characters (UTF-16 units in, UTF-16 units out)", () => {
    const d = textDocumentView(`s = "${EMOJI}"`);
    const at = { line: 0, character: 10 };  // end of line: 's = "' (5) + 4 units + '"' (1)
    const r = convertInlineResult({ items: [{ insertText: "\n", range: { start: at, end: at } }] }, at, d);
    assert.deepEqual(r.items[0].range.start, at);
    const utf8 = convertInlineResult({ items: [{ insertText: ";", range: { start: { line: 0, character: 12 },
      end: { line: 0, character: 12 } } }] }, at, d, "utf-8");
    assert.deepEqual(utf8.items[0].range, { start: at, end: at });  // 12 bytes == 10 UTF-16 units
  });

  it("marks snippets and keeps filterText and command", () => {
    const command = { title: "t", command: "dlsp.accepted", arguments: [1] };
    const r = convertInlineResult({ items: [{ insertText: { kind: "snippet", value: " + ${1:b}" },
      filterText: " + b", command }] }, cursor, doc);
    assert.deepEqual(r.items, [{ insertText: " + ${1:b}", snippet: true, range: { start: cursor, end: cursor },
      filterText: " + b", command }]);
  });

  it("orders a reversed range", () => {
    const start = { line: 1, character: 11 };
    const r = convertInlineResult({ items: [{ insertText: "a + b", range: { start: cursor, end: start } }] },
      cursor, doc);
    assert.deepEqual(r.items[0].range, { start, end: cursor });
  });
});
