import * as assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";

import { SERVER_COMMANDS, TITLES, commandArguments, countEdits, editResultMessage, hasServerTarget } from "../commands";

const range = { start: { line: 1, character: 0 }, end: { line: 3, character: 4 } };
const active = { uri: "file:///w/a.py", range };

describe("commandArguments", () => {
  it("passes a code action's arguments through", () => {
    const args = [{ uri: "file:///w/b.py", range }];
    assert.deepEqual(commandArguments(args, active), args);
    assert.deepEqual(commandArguments(["file:///w/b.py", range.start], active), ["file:///w/b.py", range.start]);
  });

  it("uses the active selection for a palette call (no args) or a menu call (a URI object)", () => {
    assert.deepEqual(commandArguments([], active), [{ uri: active.uri, range }]);
    const uriObject = { scheme: "file", path: "/w/a.py", fsPath: "/w/a.py" };
    assert.deepEqual(commandArguments([uriObject], active), [{ uri: active.uri, range }]);
  });

  it("throws a message for the user without an editor", () => {
    assert.throws(() => commandArguments([], null), /open a file/);
  });

  it("checks the shape of a target", () => {
    assert.equal(hasServerTarget([{ uri: "u", position: { line: 0, character: 0 } }]), true);
    assert.equal(hasServerTarget([{ uri: "u", range: { start: { line: 0 } } }]), false);
    assert.equal(hasServerTarget([{ uri: 3, range }]), false);
  });
});

describe("edit results", () => {
  it("counts edits in both WorkspaceEdit shapes", () => {
    assert.equal(countEdits({ applied: true, edit: { changes: { u: [{}, {}] } } }), 2);
    assert.equal(countEdits({ applied: true, edit: { documentChanges: [{ edits: [{}] }, { edits: [{}, {}] }] } }), 3);
    assert.equal(countEdits(null), 0);
  });

  it("says nothing after an applied edit and explains the other cases", () => {
    const cmd = SERVER_COMMANDS.fillHoles;
    assert.equal(editResultMessage(cmd, { applied: true, edit: { changes: { u: [{}] } } }), null);
    assert.match(editResultMessage(cmd, { applied: false, edit: { changes: {} } })!, /Fill holes: nothing to change/);
    assert.match(editResultMessage(cmd, { applied: false, edit: { changes: { u: [{}] } } })!, /not applied/);
  });
});

describe("package.json commands", () => {
  it("contributes every server command with its title", () => {
    const manifest = JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
    const contributed = new Map<string, string>(
      manifest.contributes.commands.map((c: { command: string; title: string }) => [c.command, c.title]));
    for (const id of Object.values(SERVER_COMMANDS)) assert.equal(contributed.get(id), TITLES[id], id);
    for (const id of ["dlsp.showStats", "dlsp.restartServer", "dlsp.showOutput"]) assert.ok(contributed.has(id), id);
  });
});
