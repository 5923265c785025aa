import * as assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, it } from "node:test";

import {
  DEFAULT_PYTHON, SERVER_DEFAULTS, SERVER_KEYS, ServerKey, emptyServerSettings, initializationOptions,
  needsRestart, readSettings, settingsDelta,
} from "../settings";

const getter = (values: Record<string, unknown>) => (key: string) => values[key];
const manifest = JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
const properties: Record<string, { default?: unknown }> = manifest.contributes.configuration.properties;

describe("readSettings", () => {
  it("reads valid values and leaves unset keys null", () => {
    const r = readSettings(getter({ modelPath: " /models/dream ", threshold: 0.8, steps: 12,
      enabledLanguages: ["python", " rust "], logLevel: "DEBUG" }));
    assert.deepEqual(r.problems, []);
    assert.equal(r.server.modelPath, "/models/dream");
    assert.equal(r.server.threshold, 0.8);
    assert.equal(r.server.steps, 12);
    assert.deepEqual(r.server.enabledLanguages, ["python", "rust"]);
    assert.equal(r.server.logLevel, "debug");
    assert.equal(r.server.device, null);
    assert.equal(r.server.maxTokens, null);
    assert.deepEqual(r.client, { pythonPath: DEFAULT_PYTHON, serverArgs: [], serverEnv: {} });
  });

  it("rejects invalid values with a message naming the key, falling back to the default", () => {
    const r = readSettings(getter({ threshold: 1.5, steps: 2.5, minPerStep: 0, draft: 65, closeBrackets: -1, baseWeight: 17, baseMultiline: "yes", rerank: 1, minConfidence: 1.2, maxTokens: "64", debounceMs: -1,
      enabledLanguages: ["python", 3], contextTokens: 0, logLevel: "verbose" }));
    const keys = ["threshold", "steps", "minPerStep", "draft", "closeBrackets", "baseWeight", "baseMultiline", "rerank", "minConfidence", "maxTokens", "debounceMs", "enabledLanguages", "contextTokens", "logLevel"];
    assert.equal(r.problems.length, keys.length);
    for (const key of keys) {
      assert.ok(r.problems.some((p) => p.startsWith(`dlsp.${key}:`)), `no problem reported for ${key}`);
      assert.equal(r.server[key as ServerKey], null);
    }
    assert.match(r.problems.find((p) => p.startsWith("dlsp.threshold"))!, /0\.\.1, got 1\.5/);
    assert.match(r.problems.find((p) => p.startsWith("dlsp.logLevel"))!, /debug, info, warning, error/);
  });

  it("treats an empty model path or device as the default", () => {
    const r = readSettings(getter({ modelPath: "  ", device: "" }));
    assert.equal(r.server.modelPath, null);
    assert.equal(r.server.device, null);
    assert.deepEqual(r.problems, []);
  });

  it("reads and validates the client settings", () => {
    const good = readSettings(getter({ pythonPath: "/venv/bin/python", serverArgs: ["--log-level", "debug"],
      serverEnv: { OMP_NUM_THREADS: "2" } }));
    assert.deepEqual(good.client, { pythonPath: "/venv/bin/python", serverArgs: ["--log-level", "debug"],
      serverEnv: { OMP_NUM_THREADS: "2" } });
    const bad = readSettings(getter({ pythonPath: 3, serverArgs: "--tcp", serverEnv: { A: 1 } }));
    assert.equal(bad.client.pythonPath, DEFAULT_PYTHON);
    assert.deepEqual(bad.client.serverArgs, []);
    assert.deepEqual(bad.client.serverEnv, {});
    assert.equal(bad.problems.length, 3);
  });
});

describe("initializationOptions", () => {
  it("sends only the keys that are set", () => {
    const r = readSettings(getter({ maxTokens: 32, device: "cpu" }));
    assert.deepEqual(initializationOptions(r.server), { maxTokens: 32, device: "cpu" });
    assert.deepEqual(initializationOptions(emptyServerSettings()), {});
  });
});

describe("settingsDelta", () => {
  it("is null when nothing changed", () => {
    const a = readSettings(getter({ steps: 4, enabledLanguages: ["go"] })).server;
    const b = readSettings(getter({ steps: 4, enabledLanguages: ["go"] })).server;
    assert.equal(settingsDelta(a, b), null);
  });

  it("holds only the changed keys", () => {
    const a = readSettings(getter({ steps: 4, maxTokens: 64 })).server;
    const b = readSettings(getter({ steps: 8, maxTokens: 64, threshold: 0.5 })).server;
    assert.deepEqual(settingsDelta(a, b), { steps: 8, threshold: 0.5 });
  });

  it("sends null for a cleared nullable key and the server default for the others", () => {
    const a = readSettings(getter({ modelPath: "/m", maxTokens: 16, logLevel: "debug" })).server;
    const b = readSettings(getter({})).server;
    assert.deepEqual(settingsDelta(a, b), { modelPath: null, maxTokens: 64, logLevel: "info" });
  });
});

describe("needsRestart", () => {
  it("is true only when the server command changes", () => {
    const a = readSettings(getter({ pythonPath: "python3", steps: 3 })).client;
    const b = readSettings(getter({ pythonPath: "python3", steps: 9 })).client;
    const c = readSettings(getter({ pythonPath: "python3", serverEnv: { X: "1" } })).client;
    assert.equal(needsRestart(a, b), false);
    assert.equal(needsRestart(a, c), true);
  });
});

describe("package.json contributes.configuration", () => {
  it("declares every server key and the client keys", () => {
    const declared = Object.keys(properties).map((k) => k.replace(/^dlsp\./, "")).sort();
    const expected = [...Object.keys(SERVER_KEYS), "pythonPath", "serverArgs", "serverEnv"].sort();
    assert.deepEqual(declared, expected);
  });

  it("has defaults that pass validation and match the server's defaults", () => {
    const defaults: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(properties)) defaults[k.replace(/^dlsp\./, "")] = v.default;
    const r = readSettings(getter(defaults));
    assert.deepEqual(r.problems, []);
    for (const [key, value] of Object.entries(SERVER_DEFAULTS)) {
      assert.deepEqual(r.server[key as ServerKey], value, key);
    }
    assert.equal(r.client.pythonPath, DEFAULT_PYTHON);
  });
});
