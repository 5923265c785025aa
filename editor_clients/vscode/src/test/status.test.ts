import * as assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ServerStats, formatMs, formatStats, statusView } from "../status";

const running = { connection: "running" as const };
const stats: ServerStats = {
  stages: {
    total: { count: 10, p50_ms: 41.6, p95_ms: 120.2 },
    steps: { count: 8, p50_ms: 30.04, p95_ms: 90 },
    context: { count: 10, p50_ms: 1.234, p95_ms: 2.5 },
    custom: { count: 1, p50_ms: 5, p95_ms: 5 },
  },
  requests: { completed: 8, cancelled: 2, dropped: 0, cached: 1, empty: 0, errors: 0 },
  last_latency_ms: 37.4,
  model: { model: "dlsp-tiny", family: "dream", params: 12_345_678, device: "cpu", dtype: "float32" },
  state: "ready",
};

describe("formatMs", () => {
  it("picks a precision by magnitude and handles missing values", () => {
    assert.equal(formatMs(3.14159), "3.1 ms");
    assert.equal(formatMs(42.5), "43 ms");
    assert.equal(formatMs(1530), "1.5 s");
    assert.equal(formatMs(null), "–");
    assert.equal(formatMs(Number.NaN), "–");
  });
});

describe("statusView", () => {
  it("shows a spinner before any status and while loading", () => {
    assert.match(statusView(null, null, { connection: "starting" }).text, /sync~spin/);
    const v = statusView({ state: "loading", model: null, device: null, message: "loading /m" }, null, running);
    assert.match(v.text, /sync~spin/);
    assert.match(v.tooltip, /loading \/m/);
    assert.equal(v.severity, "normal");
  });

  it("shows the server's last latency when ready, else the round trip", () => {
    const ready = { state: "ready", model: "dlsp-tiny", device: "cpu", message: "model loaded" };
    const v = statusView(ready, stats, { connection: "running", roundTripMs: 55 });
    assert.equal(v.text, "$(zap) dlsp 37 ms");
    assert.match(v.tooltip, /model: dlsp-tiny on cpu/);
    assert.match(v.tooltip, /37 ms in the server, 55 ms round trip/);
    assert.match(v.tooltip, /p50 42 ms, p95 120 ms over 10/);
    assert.equal(statusView(ready, null, { connection: "running", roundTripMs: 8 }).text, "$(zap) dlsp 8.0 ms");
    assert.equal(statusView(ready, null, running).text, "$(zap) dlsp");
  });

  it("takes the model name from the stats when the notification has none", () => {
    const v = statusView(null, stats, running);
    assert.match(v.text, /zap/);
    assert.match(v.tooltip, /model: dlsp-tiny on cpu/);
  });

  it("marks a failed load and a stopped server as errors", () => {
    const failed = statusView({ state: "failed", message: "could not load the model: no config.json" }, null, running);
    assert.equal(failed.severity, "error");
    assert.match(failed.text, /error/);
    assert.match(failed.tooltip, /no config\.json/);
    const stopped = statusView({ state: "ready" }, stats, { connection: "stopped" });
    assert.equal(stopped.severity, "error");
    assert.doesNotMatch(stopped.text, /ms/);
  });
});

describe("formatStats", () => {
  it("says so when there are no stats", () => {
    assert.match(formatStats(null), /no statistics/);
    assert.match(formatStats({ stages: {}, requests: {}, last_latency_ms: null, state: "loading" }),
      /state: loading[\s\S]*no timed requests yet/);
  });

  it("lists model, counters and stages in pipeline order", () => {
    const text = formatStats(stats);
    assert.match(text, /model=dlsp-tiny {2}family=dream {2}params=12\.3M {2}device=cpu {2}dtype=float32/);
    assert.match(text, /requests: completed 8, cancelled 2/);
    const rows = text.split("\n").filter((l) => /^(context|steps|total|custom)\b/.test(l));
    assert.deepEqual(rows.map((r) => r.split(/\s+/)[0]), ["context", "steps", "total", "custom"]);
    const steps = rows[1].split(/\s{2,}/);
    assert.deepEqual(steps, ["steps", "8", "30 ms", "90 ms"]);
  });
});
