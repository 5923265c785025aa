/**
 * `textDocument/inlineCompletion` results -> plain items VS Code can show.
 *
 * Positions: LSP counts characters in the negotiated position encoding (UTF-16 unless the server
 * said otherwise); VS Code counts UTF-16 code units. This module converts, clamps ranges into the
 * document, and drops items that cannot apply at the cursor (empty, multi-line range, range not
 * around the cursor, or text typed since that no longer matches the suggestion). Knows nothing
 * about VS Code: the document is seen through `DocumentView`.
 */

export type Encoding = "utf-8" | "utf-16" | "utf-32";

export interface Pos {
  line: number;
  character: number;
}

export interface Rng {
  start: Pos;
  end: Pos;
}

/** LSP 3.18 `StringValue`: a snippet. */
export interface StringValue {
  kind: "snippet";
  value: string;
}

export interface LspCommand {
  title: string;
  command: string;
  arguments?: unknown[];
}

export interface LspInlineItem {
  insertText: string | StringValue;
  filterText?: string;
  range?: Rng;
  command?: LspCommand;
}

export type LspInlineResult = { items: LspInlineItem[] } | LspInlineItem[] | null | undefined;

/** One item ready for `new vscode.InlineCompletionItem(...)`; positions in UTF-16 units. */
export interface PlainItem {
  insertText: string;
  snippet: boolean;
  range: Rng;
  filterText?: string;
  command?: LspCommand;
}

export interface DocumentView {
  lineCount: number;
  /** The text of a line, without its line break. */
  lineText(line: number): string;
}

export interface Converted {
  items: PlainItem[];
  /** Why items were left out, one entry per item (for debug logs and tests). */
  dropped: string[];
}

export function parseEncoding(value: unknown): Encoding {
  return value === "utf-8" || value === "utf-32" ? value : "utf-16";
}

/** Units one code point takes in an encoding. */
function unitsOf(codePoint: number, encoding: Encoding): number {
  if (encoding === "utf-32") return 1;
  if (encoding === "utf-16") return codePoint > 0xffff ? 2 : 1;
  return codePoint < 0x80 ? 1 : codePoint < 0x800 ? 2 : codePoint < 0x10000 ? 3 : 4;
}

/** A column in `encoding` units -> a UTF-16 column of `line`. Past the end clamps to the end; a
 * column inside a character (half a surrogate pair, inside a UTF-8 sequence) rounds down to its
 * start, as the server does (lsp_server/convert.py `column_to_index`). */
export function toUtf16Column(line: string, column: number, encoding: Encoding): number {
  if (column <= 0) return 0;
  let units = 0;
  let utf16 = 0;
  for (const ch of line) {  // iterates code points
    const cp = ch.codePointAt(0)!;
    const next = units + unitsOf(cp, encoding);
    if (next > column) return utf16;
    units = next;
    utf16 += ch.length;
    if (units === column) return utf16;
  }
  return line.length;
}

/** A UTF-16 column of `line` -> a column in `encoding` units (clamped into the line). */
export function fromUtf16Column(line: string, column: number, encoding: Encoding): number {
  const head = line.slice(0, Math.max(0, Math.min(column, line.length)));
  let units = 0;
  for (const ch of head) units += unitsOf(ch.codePointAt(0)!, encoding);
  // A column inside a surrogate pair leaves a lone high surrogate at the end of `head`, which the
  // loop above counted as one unit: fine for UTF-16, and rounds down for the others.
  if (encoding !== "utf-16" && /[\ud800-\udbff]$/.test(head)) units -= unitsOf(0xd800, encoding);
  return units;
}

/** An LSP position -> a VS Code (UTF-16) position clamped into the document. */
export function toDocumentPosition(doc: DocumentView, pos: Pos, encoding: Encoding): Pos {
  if (doc.lineCount <= 0 || pos.line < 0) return { line: 0, character: 0 };
  if (pos.line >= doc.lineCount) {
    const last = doc.lineCount - 1;
    return { line: last, character: doc.lineText(last).length };
  }
  return { line: pos.line, character: toUtf16Column(doc.lineText(pos.line), pos.character, encoding) };
}

/** A VS Code position -> an LSP position in the server's encoding. */
export function toServerPosition(doc: DocumentView, pos: Pos, encoding: Encoding): Pos {
  if (encoding === "utf-16" || pos.line < 0 || pos.line >= doc.lineCount) return pos;
  return { line: pos.line, character: fromUtf16Column(doc.lineText(pos.line), pos.character, encoding) };
}

function before(a: Pos, b: Pos): boolean {
  return a.line < b.line || (a.line === b.line && a.character < b.character);
}

export function itemsOf(result: LspInlineResult): LspInlineItem[] {
  if (!result) return [];
  return Array.isArray(result) ? result : Array.isArray(result.items) ? result.items : [];
}

/** Convert one result at `cursor` (a UTF-16 position in `doc`, the document as it is now). */
export function convertInlineResult(result: LspInlineResult, cursor: Pos, doc: DocumentView,
  encoding: Encoding = "utf-16"): Converted {
  const items: PlainItem[] = [];
  const dropped: string[] = [];
  for (const item of itemsOf(result)) {
    const snippet = typeof item.insertText === "object" && item.insertText !== null;
    const text = snippet ? (item.insertText as StringValue).value : item.insertText;
    if (typeof text !== "string" || text === "") {
      dropped.push("empty");
      continue;
    }
    const range = item.range
      ? { start: toDocumentPosition(doc, item.range.start, encoding), end: toDocumentPosition(doc, item.range.end, encoding) }
      : { start: cursor, end: cursor };
    if (before(range.end, range.start)) [range.start, range.end] = [range.end, range.start];
    if (range.start.line !== range.end.line) {  // VS Code: "must begin and end on the same line"
      dropped.push("multi-line range");
      continue;
    }
    // An insertion earlier on the cursor's line (the server answered before the user typed on):
    // read it as replacing what was typed since, which the check below compares with the text.
    if (range.start.line === cursor.line && !before(range.start, range.end) && before(range.start, cursor)) {
      range.end = cursor;
    }
    if (range.start.line !== cursor.line || before(cursor, range.start) || before(range.end, cursor)) {
      dropped.push("range does not contain the cursor");
      continue;
    }
    const line = doc.lineText(cursor.line);
    const typed = line.slice(range.start.character, cursor.character);
    const filter = item.filterText ?? text;
    if (!snippet && !filter.startsWith(typed)) {  // the user typed something else since
      dropped.push("stale: typed text does not match");
      continue;
    }
    if (!snippet && text === line.slice(range.start.character, range.end.character)) {
      dropped.push("no change");
      continue;
    }
    const out: PlainItem = { insertText: text, snippet, range };
    if (item.filterText !== undefined) out.filterText = item.filterText;
    if (item.command) out.command = item.command;
    items.push(out);
  }
  return { items, dropped };
}

/** A document given as a string (tests, and any caller without an editor document). */
export function textDocumentView(text: string): DocumentView {
  const lines = text.split(/\r\n|\r|\n/);
  return { lineCount: lines.length, lineText: (i) => lines[i] ?? "" };
}
