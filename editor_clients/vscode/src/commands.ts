/**
 * The server's edit commands (lsp_server/actions.py) as seen from the editor: their ids and
 * titles, the arguments a palette or menu invocation needs, and what to tell the user about the
 * result. Knows nothing about VS Code.
 */

import { Rng } from "./inline";

/** Command ids the server registers (`workspace/executeCommand`) and offers as code actions. */
export const SERVER_COMMANDS = {
  regenerateSelection: "dlsp.regenerateSelection",
  fillHoles: "dlsp.fillHoles",
  completeBody: "dlsp.completeBody",
} as const;

export const TITLES: Record<string, string> = {
  [SERVER_COMMANDS.regenerateSelection]: "Regenerate selection",
  [SERVER_COMMANDS.fillHoles]: "Fill holes",
  [SERVER_COMMANDS.completeBody]: "Complete body",
};

/** The server's argument shape: `[{uri, range}]` (lsp_server/server.py `_action_target`). */
export interface Target {
  uri: string;
  range: Rng;
}

function isPos(v: unknown): boolean {
  const p = v as { line?: unknown; character?: unknown } | null;
  return !!p && typeof p.line === "number" && typeof p.character === "number";
}

function isRange(v: unknown): boolean {
  const r = v as { start?: unknown; end?: unknown } | null;
  return !!r && isPos(r.start) && isPos(r.end);
}

/** Whether `args` already have the server's shape (a code action's command arguments). */
export function hasServerTarget(args: readonly unknown[]): boolean {
  if (args.length === 1 && args[0] && typeof args[0] === "object") {
    const d = args[0] as { uri?: unknown; range?: unknown; position?: unknown };
    return typeof d.uri === "string" && (isRange(d.range) || isPos(d.position));
  }
  return args.length >= 2 && typeof args[0] === "string" && (isRange(args[1]) || isPos(args[1]));
}

/** Arguments to send: the given ones when they name a target, else the active editor's selection
 * (a palette invocation passes none, an editor menu passes the file's URI object). Throws with a
 * message for the user when there is no editor to act on. */
export function commandArguments(args: readonly unknown[], active: Target | null): unknown[] {
  if (hasServerTarget(args)) return [...args];
  if (!active) throw new Error("open a file and place the cursor (or select code) first");
  return [{ uri: active.uri, range: active.range }];
}

/** The server's answer to an edit command: `{applied, edit}`. */
export interface EditResult {
  applied?: boolean;
  edit?: {
    changes?: Record<string, unknown[]>;
    documentChanges?: { edits?: unknown[] }[];
  };
}

export function countEdits(result: EditResult | null | undefined): number {
  const edit = result?.edit;
  if (!edit) return 0;
  let n = 0;
  for (const edits of Object.values(edit.changes ?? {})) n += Array.isArray(edits) ? edits.length : 0;
  for (const change of edit.documentChanges ?? []) n += Array.isArray(change?.edits) ? change.edits.length : 0;
  return n;
}

/** A message for the user, or null when the edit was applied and there is nothing to say. */
export function editResultMessage(command: string, result: EditResult | null | undefined): string | null {
  const title = TITLES[command] ?? command;
  const n = countEdits(result);
  if (n === 0) return `dlsp: ${title}: nothing to change here (is the model ready?)`;
  if (!result?.applied) return `dlsp: ${title}: the edit was not applied (the document changed meanwhile?)`;
  return null;
}
