import * as assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import * as path from "node:path";
import { it } from "node:test";

// The pure modules must load without VS Code (that is what lets these tests run under plain node).
it("no module but extension.js imports vscode or the language client", () => {
  const outDir = path.join(__dirname, "..");
  const modules = readdirSync(outDir).filter((f) => f.endsWith(".js") && f !== "extension.js");
  assert.ok(modules.length >= 5, `expected the pure modules in ${outDir}, found ${modules}`);
  for (const f of modules) {
    const source = readFileSync(path.join(outDir, f), "utf8");
    assert.doesNotMatch(source, /require\("vscode(-languageclient[^"]*)?"\)/, f);
  }
});
