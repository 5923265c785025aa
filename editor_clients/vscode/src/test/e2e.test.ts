/**
 * The pure modules against the real server: start `python -m lsp_server` as the extension would
 * (server.ts, settings.ts), talk JSON-RPC over stdio, and feed the answers through inline.ts,
 * status.ts and commands.ts. Runs only when DLSP_E2E_PYTHON names a Python with dlsp installed
 * (tests/editor_clients/test_vscode.py sets it, with DLSP_E2E_MODEL pointing at a tiny model).
 */

import * as assert from "node:assert/strict";
import { ChildProcess, spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";

import { MessageConnection, StreamMessageReader, StreamMessageWriter, createMessageConnection } from "vscode-jsonrpc/node";

import { SERVER_COMMANDS, commandArguments, countEdits } from "../commands";
import { convertInlineResult, LspInlineResult, parseEncoding, textDocumentView } from "../inline";
import { serverCommand } from "../server";
import { initializationOptions, readSettings } from "../settings";
import { ModelStatus, ServerStats, formatStats, statusView } from "../status";

const PYTHON = process.env.DLSP_E2E_PYTHON;
const MODEL = process.env.DLSP_E2E_MODEL;
const URI = "file:///w/e2e.py";
const TEXT = "def add(a, b):\n    return \n\n\nprint(add(1, 2))\n";

describe("against the real server", { skip: PYTHON ? false : "set DLSP_E2E_PYTHON to run" }, () => {
  let proc: ChildProcess;
  let conn: MessageConnection;
  let caps: Record<string, any>;
  const statuses: ModelStatus[] = [];
  let ready: Promise<ModelStatus>;

  before(async () => {
    const values: Record<string, unknown> = { pythonPath: PYTHON, modelPath: MODEL ?? null, device: "cpu",
      debounceMs: 0, maxTokens: 8, logLevel: "warning" };
    const { client, server, problems } = readSettings((k) => values[k]);
    assert.deepEqual(problems, []);
    const cmd = serverCommand(client, server, { baseEnv: { ...process.env, OMP_NUM_THREADS: "1" } });
    proc = spawn(cmd.command, cmd.args, { env: cmd.env, stdio: ["pipe", "pipe", "inherit"] });
    conn = createMessageConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
    const exited = new Promise<never>((_, reject) => {
      proc.once("exit", (code) => reject(new Error(`the server exited with ${code} (see stderr above)`)));
    });
    exited.catch(() => undefined);
    ready = Promise.race([exited, new Promise<ModelStatus>((resolve) => {
      conn.onNotification("dlsp/status", (s: ModelStatus) => {
        statuses.push(s);
        if (s.state !== "loading") resolve(s);
      });
    })]);
    conn.onRequest("workspace/applyEdit", () => ({ applied: true }));
    conn.listen();
    const init = await Promise.race([exited, conn.sendRequest<{ capabilities: Record<string, any> }>("initialize", {
      processId: process.pid, rootUri: null,
      capabilities: { general: { positionEncodings: ["utf-16"] }, workspace: { applyEdit: true,
        workspaceEdit: { documentChanges: true } } },
      initializationOptions: initializationOptions(server),
    })]);
    caps = init.capabilities;
    await conn.sendNotification("initialized", {});
    await conn.sendNotification("textDocument/didOpen",
      { textDocument: { uri: URI, languageId: "python", version: 1, text: TEXT } });
  });

  after(async () => {
    if (!conn || proc.exitCode !== null) return;
    await conn.sendRequest("shutdown");
    await conn.sendNotification("exit");
    await new Promise((resolve) => proc.once("exit", resolve));
    conn.dispose();
  });

  it("advertises what the extension relies on", () => {
    assert.equal(parseEncoding(caps.positionEncoding), "utf-16");
    assert.ok(caps.inlineCompletionProvider);
    assert.deepEqual([...caps.executeCommandProvider.commands].sort(), Object.values(SERVER_COMMANDS).sort());
  });

  it("reports the model ready through dlsp/status", async () => {
    const s = await ready;
    assert.equal(s.state, "ready", s.message ?? "");
    assert.equal(statuses[0].state, "loading");
    assert.match(statusView(s, null, { connection: "running" }).text, /zap/);
  });

  it("answers inline completions that convert to items at the cursor", async () => {
    await ready;
    const cursor = { line: 1, character: 11 };
    const result = await conn.sendRequest<LspInlineResult>("textDocument/inlineCompletion", {
      textDocument: { uri: URI }, position: cursor, context: { triggerKind: 1 } });
    const { items, dropped } = convertInlineResult(result, cursor, textDocumentView(TEXT), parseEncoding(caps.positionEncoding));
    const sent = Array.isArray(result) ? result : result?.items ?? [];
    assert.equal(items.length + dropped.length, sent.length);
    for (const item of items) {
      assert.equal(item.range.start.line, 1);
      assert.ok(item.range.start.character <= 11 && item.range.end.character >= 11);
      assert.ok(item.insertText.length > 0);
    }
  });

  it("serves dlsp/stats in the shape status.ts reads", async () => {
    const stats = await conn.sendRequest<ServerStats>("dlsp/stats", {});
    assert.equal(stats.state, "ready");
    assert.ok(stats.stages && stats.requests);
    const text = formatStats(stats);
    assert.match(text, /state: ready/);
    assert.match(text, /requests: completed/);
    if (stats.stages.total) assert.match(text, /\ntotal\s+\d+/);
  });

  it("runs an edit command with the arguments a palette call gets", async () => {
    await ready;
    const args = commandArguments([], { uri: URI, range: { start: { line: 4, character: 6 },
      end: { line: 4, character: 15 } } });  // "add(1, 2)"
    const result = await conn.sendRequest<any>("workspace/executeCommand",
      { command: SERVER_COMMANDS.regenerateSelection, arguments: args });
    assert.equal(typeof result.applied, "boolean");
    assert.ok(countEdits(result) >= 0);
    assert.equal(result.applied, countEdits(result) > 0);
  });
});
