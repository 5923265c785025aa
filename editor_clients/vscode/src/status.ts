/**
 * What the status-bar item says: model state (from the `dlsp/status` notification), the last
 * completion latency and the per-stage timings (from the `dlsp/stats` request), as plain text.
 * Knows nothing about VS Code; `$(name)` are codicon references the status bar renders.
 */

/** `dlsp/status` params (lsp_server/model_host.py `ModelHost.status`). */
export interface ModelStatus {
  state: string;  // "loading" | "ready" | "failed"
  model?: string | null;
  device?: string | null;
  message?: string | null;
}

export interface StageStats {
  count: number;
  p50_ms: number;
  p95_ms: number;
}

/** `dlsp/stats` result (lsp_server/service.py `snapshot_stats`). */
export interface ServerStats {
  stages?: Record<string, StageStats>;
  requests?: Record<string, number>;
  last_latency_ms?: number | null;
  model?: Record<string, unknown> | null;
  state?: string;
}

/** The client's side: is the server process up, and how long did the last request take. */
export interface ClientView {
  connection: "starting" | "running" | "stopped";
  roundTripMs?: number | null;
}

export interface StatusView {
  text: string;
  tooltip: string;
  severity: "normal" | "warning" | "error";
}

/** The pipeline's stages in the order they happen (lsp_server/stats.py); others sort after. */
export const STAGE_ORDER = ["queue", "context", "tokenize", "prefill", "steps", "detokenize",
  "postprocess", "engine", "total"];

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 0) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  return `${Math.round(ms)} ms`;
}

function formatCount(n: unknown): string {
  if (typeof n !== "number" || !Number.isFinite(n)) return String(n);
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

/** The model's name and device: from the notification, else from the stats' engine info. */
function modelLine(status: ModelStatus | null, stats: ServerStats | null): string | null {
  const info = stats?.model ?? null;
  const name = status?.model ?? (typeof info?.model === "string" ? info.model : null);
  const device = status?.device ?? (typeof info?.device === "string" ? info.device : null);
  if (!name && !device) return null;
  return `model: ${name ?? "?"}${device ? ` on ${device}` : ""}`;
}

/** Status-bar text, tooltip and severity. */
export function statusView(status: ModelStatus | null, stats: ServerStats | null, client: ClientView): StatusView {
  if (client.connection === "stopped") {
    return { text: "$(circle-slash) dlsp", tooltip: "dlsp: the server is not running (click for details)",
      severity: "error" };
  }
  const state = status?.state ?? stats?.state ?? "starting";
  const lines: string[] = [];
  const model = modelLine(status, stats);
  let text: string;
  let severity: StatusView["severity"] = "normal";
  if (state === "ready") {
    const latency = stats?.last_latency_ms ?? client.roundTripMs ?? null;
    text = latency === null ? "$(zap) dlsp" : `$(zap) dlsp ${formatMs(latency)}`;
    lines.push("dlsp: model ready");
  } else if (state === "failed") {
    text = "$(error) dlsp";
    severity = "error";
    lines.push("dlsp: the model could not be loaded");
  } else if (state === "loading") {
    text = "$(sync~spin) dlsp";
    lines.push("dlsp: loading the model");
  } else {
    text = "$(sync~spin) dlsp";
    severity = state === "starting" ? "normal" : "warning";
    lines.push(`dlsp: ${state}`);
  }
  if (model) lines.push(model);
  if (status?.message) lines.push(status.message);
  if (stats?.last_latency_ms !== undefined && stats?.last_latency_ms !== null) {
    lines.push(`last completion: ${formatMs(stats.last_latency_ms)} in the server`
      + (client.roundTripMs ? `, ${formatMs(client.roundTripMs)} round trip` : ""));
  } else if (client.roundTripMs) {
    lines.push(`last request: ${formatMs(client.roundTripMs)} round trip`);
  }
  const total = stats?.stages?.total;
  if (total) lines.push(`total: p50 ${formatMs(total.p50_ms)}, p95 ${formatMs(total.p95_ms)} over ${total.count}`);
  lines.push("click for statistics");
  return { text, tooltip: lines.join("\n"), severity };
}

function stageRank(name: string): number {
  const i = STAGE_ORDER.indexOf(name);
  return i < 0 ? STAGE_ORDER.length : i;
}

/** A plain-text report of `dlsp/stats`: model, request counters, and a table of stage timings. */
export function formatStats(stats: ServerStats | null, status: ModelStatus | null = null): string {
  if (!stats) return "dlsp: no statistics yet (is the server running?)";
  const out: string[] = [];
  out.push(`state: ${stats.state ?? status?.state ?? "unknown"}`);
  const info = stats.model;
  if (info && typeof info === "object") {
    const parts = ["model", "family", "params", "device", "dtype"]
      .filter((k) => info[k] !== undefined && info[k] !== null)
      .map((k) => `${k}=${k === "params" ? formatCount(info[k]) : String(info[k])}`);
    if (parts.length) out.push(parts.join("  "));
  }
  const requests = Object.entries(stats.requests ?? {});
  if (requests.length) out.push(`requests: ${requests.map(([k, v]) => `${k} ${v}`).join(", ")}`);
  out.push(`last latency: ${formatMs(stats.last_latency_ms)}`);
  const stages = Object.entries(stats.stages ?? {})
    .sort(([a], [b]) => stageRank(a) - stageRank(b) || a.localeCompare(b));
  if (!stages.length) {
    out.push("no timed requests yet");
    return out.join("\n");
  }
  const width = Math.max(5, ...stages.map(([name]) => name.length));
  out.push("");
  out.push(`${"stage".padEnd(width)}  ${"count".padStart(6)}  ${"p50".padStart(9)}  ${"p95".padStart(9)}`);
  for (const [name, s] of stages) {
    out.push(`${name.padEnd(width)}  ${String(s.count).padStart(6)}  ${formatMs(s.p50_ms).padStart(9)}`
      + `  ${formatMs(s.p95_ms).padStart(9)}`);
  }
  return out.join("\n");
}
