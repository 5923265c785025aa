/**
 * How to start the server process: interpreter, arguments and environment for
 * `python -m lsp_server` (stdio), built from the settings. Knows nothing about VS Code.
 */

import * as path from "node:path";

import { ClientSettings, ServerSettings } from "./settings";

export interface ServerCommand {
  command: string;
  args: string[];
  env: Record<string, string>;
  cwd?: string;
}

export interface Context {
  /** The first workspace folder, if any: `${workspaceFolder}` and relative paths resolve here. */
  workspaceFolder?: string;
  /** The user's home directory, for `~`. */
  home?: string;
  /** The environment the server inherits (process.env). */
  baseEnv: Record<string, string | undefined>;
}

/** Expand `${workspaceFolder}`, `${env:NAME}` and a leading `~` in a path-like setting. */
export function expand(value: string, ctx: Context): string {
  let out = value.replace(/\$\{workspaceFolder\}/g, ctx.workspaceFolder ?? "");
  out = out.replace(/\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => ctx.baseEnv[name] ?? "");
  if (ctx.home && (out === "~" || out.startsWith("~/") || out.startsWith("~\\"))) {
    out = ctx.home + out.slice(1);
  }
  return out;
}

/** A path setting, expanded; relative paths (with a separator) are taken from the workspace folder.
 * A bare command name such as "python3" is left for PATH lookup. */
export function resolvePath(value: string, ctx: Context, bareIsCommand = false): string {
  const out = expand(value, ctx);
  if (path.isAbsolute(out)) return out;
  const looksLikePath = out.includes("/") || out.includes("\\") || !bareIsCommand;
  return looksLikePath && ctx.workspaceFolder ? path.resolve(ctx.workspaceFolder, out) : out;
}

/** The server settings with modelPath expanded and made absolute (what the server should load). */
export function resolveServerSettings(server: ServerSettings, ctx: Context): ServerSettings {
  return server.modelPath ? { ...server, modelPath: resolvePath(server.modelPath, ctx) } : server;
}

/** The command line: `<python> -m lsp_server [--model DIR] [--device D] [--log-level L] <serverArgs>`.
 * The model, device and log level are also sent in `initializationOptions`; giving them as flags
 * too means the server logs and starts loading the right model even before it reads them. */
export function serverCommand(client: ClientSettings, server: ServerSettings, ctx: Context): ServerCommand {
  const args = ["-m", "lsp_server"];
  const resolved = resolveServerSettings(server, ctx);
  if (resolved.modelPath) args.push("--model", resolved.modelPath);
  if (server.device) args.push("--device", server.device);
  if (server.logLevel) args.push("--log-level", server.logLevel);
  args.push(...client.serverArgs.map((a) => expand(a, ctx)));
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(ctx.baseEnv)) if (v !== undefined) env[k] = v;
  env.PYTHONUNBUFFERED = "1";  // stderr log lines reach the output channel as they happen
  for (const [k, v] of Object.entries(client.serverEnv)) env[k] = expand(v, ctx);
  return {
    command: resolvePath(client.pythonPath, ctx, true),
    args,
    env,
    cwd: ctx.workspaceFolder,
  };
}

/** The command line as one shell-like string, for logs and error messages. */
export function describeCommand(cmd: ServerCommand): string {
  const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`);
  return [cmd.command, ...cmd.args].map(quote).join(" ");
}
