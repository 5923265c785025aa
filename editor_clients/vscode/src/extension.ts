/**
 * The VS Code side of dlsp: start `python -m lsp_server` with vscode-languageclient, keep its
 * settings in sync, show inline completions, run the server's edit commands from the palette,
 * and show model state and latency in the status bar. The logic lives in the pure modules
 * (settings, server, inline, status, commands); this file only wires them to the editor.
 */

import * as os from "node:os";

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  InlineCompletionRequest,
  LanguageClient,
  LanguageClientOptions,
  Middleware,
  ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";

import { TITLES, Target, commandArguments, editResultMessage } from "./commands";
import { DocumentView, Encoding, LspInlineResult, convertInlineResult, parseEncoding, toServerPosition } from "./inline";
import { Context, describeCommand, resolveServerSettings, serverCommand } from "./server";
import {
  ClientSettings, ServerSettings, initializationOptions, needsRestart, readSettings, settingsDelta,
} from "./settings";
import { ClientView, ModelStatus, ServerStats, formatStats, statusView } from "./status";

const STATUS_NOTIFICATION = "dlsp/status";
const STATS_REQUEST = "dlsp/stats";
const STATS_REFRESH_MS = 400;

let session: Session | undefined;

class Session {
  private client: LanguageClient | undefined;
  private server!: ServerSettings;
  private clientSettings!: ClientSettings;
  private status: ModelStatus | null = null;
  private stats: ServerStats | null = null;
  private view: ClientView = { connection: "starting" };
  private statsTimer: NodeJS.Timeout | undefined;
  private readonly output = vscode.window.createOutputChannel("dlsp");
  private readonly statsOutput = vscode.window.createOutputChannel("dlsp stats");
  private readonly item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);

  constructor(context: vscode.ExtensionContext) {
    this.item.command = "dlsp.showStats";
    this.item.name = "dlsp";
    this.render();
    this.item.show();
    context.subscriptions.push(
      this.output, this.statsOutput, this.item,
      vscode.commands.registerCommand("dlsp.showStats", () => this.showStats()),
      vscode.commands.registerCommand("dlsp.restartServer", () => this.restart()),
      vscode.commands.registerCommand("dlsp.showOutput", () => this.output.show(true)),
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration("dlsp")) void this.configurationChanged();
      }),
    );
  }

  private ctx(): Context {
    return { workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath, home: os.homedir(),
      baseEnv: process.env };
  }

  private read(): void {
    const cfg = vscode.workspace.getConfiguration("dlsp");
    const { server, client, problems } = readSettings((key) => cfg.get(key));
    this.server = resolveServerSettings(server, this.ctx());
    this.clientSettings = client;
    if (problems.length) {
      for (const p of problems) this.output.appendLine(`[settings] ${p}`);
      void vscode.window.showWarningMessage(`dlsp: ${problems[0]}${problems.length > 1 ? ` (+${problems.length - 1} more)` : ""}`);
    }
  }

  async start(): Promise<void> {
    this.read();
    const cmd = serverCommand(this.clientSettings, this.server, this.ctx());
    this.output.appendLine(`starting: ${describeCommand(cmd)}`);
    const serverOptions: ServerOptions = {
      command: cmd.command, args: cmd.args, transport: TransportKind.stdio,
      options: { env: cmd.env, cwd: cmd.cwd },
    };
    const clientOptions: LanguageClientOptions = {
      // The server decides per language (dlsp.enabledLanguages); it needs every document's text.
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      initializationOptions: initializationOptions(this.server),
      outputChannel: this.output,
      middleware: this.middleware(),
    };
    const client = new LanguageClient("dlsp", "dlsp", serverOptions, clientOptions);
    client.registerProposedFeatures();  // v9 ships textDocument/inlineCompletion as a proposed feature
    client.onNotification(STATUS_NOTIFICATION, (s: ModelStatus) => {
      this.status = s;
      this.render();
      if (s.state === "ready") this.scheduleStats();
    });
    client.onDidChangeState((e) => {
      this.view.connection = e.newState === State.Running ? "running" : e.newState === State.Starting ? "starting" : "stopped";
      this.render();
    });
    this.client = client;
    this.status = null;
    this.stats = null;
    try {
      await client.start();
    } catch (err) {
      this.view.connection = "stopped";
      this.render();
      const choice = await vscode.window.showErrorMessage(
        `dlsp: could not start the server (${describeCommand(cmd)}): ${String(err)}`,
        "Open settings", "Show log");
      if (choice === "Open settings") void vscode.commands.executeCommand("workbench.action.openSettings", "dlsp.pythonPath");
      if (choice === "Show log") this.output.show(true);
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.statsTimer);
    const client = this.client;
    this.client = undefined;
    if (client && client.isRunning()) await client.stop();
  }

  private async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  private encoding(): Encoding {
    return parseEncoding(this.client?.initializeResult?.capabilities.positionEncoding);
  }

  private middleware(): Middleware {
    return {
      provideInlineCompletionItems: async (document, position, context, token) => {
        const client = this.client;
        if (!client) return null;
        const doc = documentView(document);
        const encoding = this.encoding();
        const params = client.code2ProtocolConverter.asInlineCompletionParams(document, position, context);
        params.position = toServerPosition(doc, position, encoding);
        const version = document.version;
        const t0 = Date.now();
        let result: LspInlineResult;
        try {
          result = (await client.sendRequest(InlineCompletionRequest.type, params, token)) as LspInlineResult;
        } catch (err) {
          if (!token.isCancellationRequested) this.output.appendLine(`[inline] request failed: ${String(err)}`);
          return null;
        }
        this.view.roundTripMs = Date.now() - t0;
        this.scheduleStats();
        if (token.isCancellationRequested || document.version !== version) return null;  // stale
        const { items, dropped } = convertInlineResult(result, position, doc, encoding);
        if (dropped.length && this.server.logLevel === "debug") {
          this.output.appendLine(`[inline] dropped ${dropped.length}: ${dropped.join("; ")}`);
        }
        return items.map((it) => {
          const range = new vscode.Range(it.range.start.line, it.range.start.character,
            it.range.end.line, it.range.end.character);
          const text = it.snippet ? new vscode.SnippetString(it.insertText) : it.insertText;
          const out = new vscode.InlineCompletionItem(text, range, it.command);
          if (it.filterText !== undefined) out.filterText = it.filterText;
          return out;
        });
      },
      executeCommand: async (command, args, next) => {
        if (!(command in TITLES)) return next(command, args);
        let sent: unknown[];
        try {
          sent = commandArguments(args, this.activeTarget());
        } catch (err) {
          void vscode.window.showWarningMessage(`dlsp: ${(err as Error).message}`);
          return undefined;
        }
        const result = await next(command, sent);
        const message = editResultMessage(command, result);
        if (message) void vscode.window.showInformationMessage(message);
        return result;
      },
    };
  }

  /** The active editor's selection (or cursor) as the server's command target. */
  private activeTarget(): Target | null {
    const editor = vscode.window.activeTextEditor;
    if (!editor) return null;
    const doc = documentView(editor.document);
    const enc = this.encoding();
    const sel = editor.selection;
    return { uri: editor.document.uri.toString(),
      range: { start: toServerPosition(doc, sel.start, enc), end: toServerPosition(doc, sel.end, enc) } };
  }

  private async configurationChanged(): Promise<void> {
    const prevServer = this.server;
    const prevClient = this.clientSettings;
    this.read();
    if (needsRestart(prevClient, this.clientSettings)) {
      this.output.appendLine("[settings] server command changed: restarting");
      await this.restart();
      return;
    }
    const delta = settingsDelta(prevServer, this.server);
    if (delta && this.client?.isRunning()) {
      await this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: { dlsp: delta } });
    }
  }

  /** Refresh `dlsp/stats` a little after activity, at most once per STATS_REFRESH_MS. */
  private scheduleStats(): void {
    if (this.statsTimer) return;
    this.statsTimer = setTimeout(() => {
      this.statsTimer = undefined;
      void this.fetchStats().then(() => this.render());
    }, STATS_REFRESH_MS);
  }

  private async fetchStats(): Promise<ServerStats | null> {
    const client = this.client;
    if (!client?.isRunning()) return this.stats;
    try {
      this.stats = await client.sendRequest<ServerStats>(STATS_REQUEST, {});
    } catch (err) {
      this.output.appendLine(`[stats] ${String(err)}`);
    }
    return this.stats;
  }

  private render(): void {
    const v = statusView(this.status, this.stats, this.view);
    this.item.text = v.text;
    this.item.tooltip = v.tooltip;
    this.item.backgroundColor = v.severity === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground")
      : v.severity === "warning" ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
  }

  private async showStats(): Promise<void> {
    const stats = await this.fetchStats();
    this.render();
    this.statsOutput.clear();
    this.statsOutput.appendLine(statusView(this.status, stats, this.view).tooltip.replace(/\nclick for statistics$/, ""));
    this.statsOutput.appendLine("");
    this.statsOutput.appendLine(formatStats(stats, this.status));
    this.statsOutput.show(true);
  }
}

function documentView(document: vscode.TextDocument): DocumentView {
  return { lineCount: document.lineCount, lineText: (i) => (i >= 0 && i < document.lineCount ? document.lineAt(i).text : "") };
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  session = new Session(context);
  await session.start();
}

export async function deactivate(): Promise<void> {
  await session?.stop();
  session = undefined;
}
