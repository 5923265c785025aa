import * as assert from "node:assert/strict";
import * as path from "node:path";
import { describe, it } from "node:test";

import { Context, describeCommand, expand, resolveServerSettings, serverCommand } from "../server";
import { readSettings } from "../settings";

const ws = path.resolve("/work/project");
const ctx: Context = { workspaceFolder: ws, home: "/home/me", baseEnv: { PATH: "/usr/bin", VENV: "/opt/venv" } };
const read = (values: Record<string, unknown>) => readSettings((k) => values[k]);

describe("serverCommand", () => {
  it("starts python -m lsp_server with no flags by default", () => {
    const { client, server } = read({});
    const cmd = serverCommand(client, server, ctx);
    assert.equal(cmd.command, "python3");
    assert.deepEqual(cmd.args, ["-m", "lsp_server"]);
    assert.equal(cmd.cwd, ws);
    assert.equal(cmd.env.PATH, "/usr/bin");
    assert.equal(cmd.env.PYTHONUNBUFFERED, "1");
  });

  it("passes model, device, log level and extra args in order", () => {
    const { client, server } = read({ modelPath: "/models/m", device: "cuda:1", logLevel: "debug",
      serverArgs: ["--tcp", "--port", "3000"] });
    const cmd = serverCommand(client, server, ctx);
    assert.deepEqual(cmd.args, ["-m", "lsp_server", "--model", "/models/m", "--device", "cuda:1",
      "--log-level", "debug", "--tcp", "--port", "3000"]);
  });

  it("expands variables and resolves relative paths against the workspace", () => {
    const { client, server } = read({ pythonPath: "${env:VENV}/bin/python", modelPath: "ckpt/small",
      serverEnv: { MODEL_HOME: "~/models" } });
    const cmd = serverCommand(client, server, ctx);
    assert.equal(cmd.command, "/opt/venv/bin/python");
    assert.deepEqual(cmd.args.slice(2, 4), ["--model", path.resolve(ws, "ckpt/small")]);
    assert.equal(cmd.env.MODEL_HOME, "/home/me/models");
  });

  it("leaves a bare interpreter name for PATH lookup but resolves a relative one", () => {
    assert.equal(serverCommand(read({ pythonPath: "python3.11" }).client, read({}).server, ctx).command, "python3.11");
    assert.equal(serverCommand(read({ pythonPath: ".venv/bin/python" }).client, read({}).server, ctx).command,
      path.resolve(ws, ".venv/bin/python"));
  });

  it("lets serverEnv override the inherited environment", () => {
    const { client, server } = read({ serverEnv: { PATH: "/custom" } });
    assert.equal(serverCommand(client, server, ctx).env.PATH, "/custom");
  });
});

describe("expand / resolveServerSettings", () => {
  it("expands ~ only at the start and unknown env vars to empty", () => {
    assert.equal(expand("~/x", ctx), "/home/me/x");
    assert.equal(expand("a~/x", ctx), "a~/x");
    assert.equal(expand("${env:NOPE}/x", ctx), "/x");
    assert.equal(expand("${workspaceFolder}/m", ctx), `${ws}/m`);
  });

  it("makes modelPath absolute for initializationOptions", () => {
    const r = resolveServerSettings(read({ modelPath: "~/m" }).server, ctx);
    assert.equal(r.modelPath, "/home/me/m");
    assert.equal(resolveServerSettings(read({}).server, ctx).modelPath, null);
  });
});

describe("describeCommand", () => {
  it("quotes arguments with spaces", () => {
    const cmd = { command: "/my python/bin/python", args: ["-m", "lsp_server"], env: {} };
    assert.equal(describeCommand(cmd), "'/my python/bin/python' -m lsp_server");
  });
});
