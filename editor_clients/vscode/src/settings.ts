/**
 * The extension's settings: read the `dlsp.*` configuration, validate it, and turn it into what the
 * server takes (`initializationOptions` and `workspace/didChangeConfiguration` payloads, with the
 * server's camelCase keys from lsp_server/settings.py). Knows nothing about VS Code: the caller
 * passes a getter over the configuration section.
 */

/** Settings the server understands; null means "the server's default". */
export interface ServerSettings {
  modelPath: string | null;
  device: string | null;
  threshold: number | null;
  steps: number | null;
  minPerStep: number | null;
  draft: number | null;
  closeBrackets: number | null;
  baseWeight: number | null;
  baseMultiline: boolean | null;
  rerank: boolean | null;
  minConfidence: number | null;
  maxTokens: number | null;
  debounceMs: number | null;
  enabledLanguages: string[] | null;
  contextTokens: number | null;
  logLevel: string | null;
}

/** Settings only the extension uses: how to start the server. */
export interface ClientSettings {
  pythonPath: string;
  serverArgs: string[];
  serverEnv: Record<string, string>;
}

export interface ReadResult {
  server: ServerSettings;
  client: ClientSettings;
  /** One human-readable line per rejected value (the value falls back to the default). */
  problems: string[];
}

export type ServerKey = keyof ServerSettings;
export type Getter = (key: string) => unknown;

export const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;
export const DEFAULT_PYTHON = "python3";

type Check = (value: unknown) => { ok: true; value: unknown } | { ok: false; why: string };

const ok = (value: unknown) => ({ ok: true as const, value });
const bad = (why: string) => ({ ok: false as const, why });

function optionalString(value: unknown) {
  if (typeof value !== "string") return bad("expected a string");
  return ok(value.trim() === "" ? null : value.trim());
}

function boolean(value: unknown) {
  if (typeof value !== "boolean") return bad("expected true or false");
  return ok(value);
}

function integer(min: number, max: number): Check {
  return (value) => {
    if (typeof value !== "number" || !Number.isInteger(value)) return bad("expected an integer");
    if (value < min || value > max) return bad(`expected ${min}..${max}`);
    return ok(value);
  };
}

function number(min: number, max: number): Check {
  return (value) => {
    if (typeof value !== "number" || !Number.isFinite(value)) return bad("expected a number");
    if (value < min || value > max) return bad(`expected ${min}..${max}`);
    return ok(value);
  };
}

function stringList(value: unknown) {
  if (!Array.isArray(value)) return bad("expected a list of language ids");
  const wrong = value.filter((v) => typeof v !== "string" || v.trim() === "");
  if (wrong.length) return bad(`not language ids: ${JSON.stringify(wrong)}`);
  return ok(value.map((v: string) => v.trim()));
}

function logLevel(value: unknown) {
  const level = typeof value === "string" ? value.toLowerCase() : value;
  if (!LOG_LEVELS.includes(level as (typeof LOG_LEVELS)[number])) {
    return bad(`expected one of ${LOG_LEVELS.join(", ")}`);
  }
  return ok(level);
}

/** Validation per server key. The ranges are those the server clamps to (lsp_server/settings.py). */
export const SERVER_KEYS: Record<ServerKey, Check> = {
  modelPath: optionalString,
  device: optionalString,
  threshold: number(0, 1),
  steps: integer(1, 4096),
  minPerStep: integer(1, 256),
  draft: integer(0, 64),
  closeBrackets: integer(0, 256),
  baseWeight: number(0, 16),
  baseMultiline: boolean,
  rerank: boolean,
  minConfidence: number(0, 1),
  maxTokens: integer(1, 65536),
  debounceMs: number(0, 5000),
  enabledLanguages: stringList,
  contextTokens: integer(1, 65536),
  logLevel,
};

/** The server's defaults for the keys it does not accept null for (lsp_server/settings.py). A key
 * reset in the editor is sent with this value, since the server ignores a null there. */
export const SERVER_DEFAULTS: Partial<ServerSettings> = {
  minConfidence: 0, maxTokens: 64, debounceMs: 20, enabledLanguages: [], contextTokens: 1024, logLevel: "info",
};

export function emptyServerSettings(): ServerSettings {
  const out = {} as Record<ServerKey, unknown>;
  for (const key of Object.keys(SERVER_KEYS) as ServerKey[]) out[key] = null;
  return out as unknown as ServerSettings;
}

function readClient(get: Getter, problems: string[]): ClientSettings {
  const client: ClientSettings = { pythonPath: DEFAULT_PYTHON, serverArgs: [], serverEnv: {} };
  const python = get("pythonPath");
  if (typeof python === "string" && python.trim() !== "") client.pythonPath = python.trim();
  else if (python !== undefined && python !== null && python !== "") problems.push("dlsp.pythonPath: expected a string");
  const args = get("serverArgs");
  if (Array.isArray(args) && args.every((a) => typeof a === "string")) client.serverArgs = [...args];
  else if (args !== undefined && args !== null) problems.push("dlsp.serverArgs: expected a list of strings");
  const env = get("serverEnv");
  if (env && typeof env === "object" && !Array.isArray(env)
      && Object.values(env).every((v) => typeof v === "string")) {
    client.serverEnv = { ...(env as Record<string, string>) };
  } else if (env !== undefined && env !== null) {
    problems.push("dlsp.serverEnv: expected an object of string values");
  }
  return client;
}

/** Read and validate every setting; a rejected value becomes null (default) plus a problem line. */
export function readSettings(get: Getter): ReadResult {
  const problems: string[] = [];
  const server = emptyServerSettings();
  const target = server as unknown as Record<ServerKey, unknown>;
  for (const [key, check] of Object.entries(SERVER_KEYS) as [ServerKey, Check][]) {
    const raw = get(key);
    if (raw === undefined || raw === null) continue;
    const result = check(raw);
    if (result.ok) target[key] = result.value;
    else problems.push(`dlsp.${key}: ${result.why}, got ${JSON.stringify(raw)}; using the server's default`);
  }
  return { server, client: readClient(get, problems), problems };
}

/** `initializationOptions`: only the keys that are set, so the server's defaults (and any
 * `--model`/`--device` given in dlsp.serverArgs) are not overwritten by nulls. */
export function initializationOptions(server: ServerSettings): Partial<ServerSettings> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(server)) {
    if (value !== null) out[key] = value;
  }
  return out as Partial<ServerSettings>;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The keys that changed between two readings. A value cleared back to the default is sent as
 * null for the keys where null means "the engine's default" (modelPath, device, threshold, steps, minPerStep, draft,
 * closeBrackets, baseWeight, baseMultiline, rerank)
 * and as the server's default value for the others. Returns null when nothing changed. */
export function settingsDelta(prev: ServerSettings, next: ServerSettings): Partial<ServerSettings> | null {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(SERVER_KEYS) as ServerKey[]) {
    if (!same(prev[key], next[key])) out[key] = next[key] ?? SERVER_DEFAULTS[key] ?? null;
  }
  return Object.keys(out).length ? (out as Partial<ServerSettings>) : null;
}

/** Whether a change of client settings needs the server process restarted. */
export function needsRestart(prev: ClientSettings, next: ClientSettings): boolean {
  return !same(prev, next);
}
