"""`python -m lsp_server` / `dlsp serve`: run the language server over stdio or TCP.

stdout belongs to the protocol: the real stdout is kept for pygls and file descriptor 1 is
pointed at stderr, so a stray print (ours or a library's) can never corrupt a message.

The exit code is the LSP's: 0 after `shutdown` + `exit`, 1 otherwise. A model still loading at
exit is abandoned: the process ends without waiting for torch to finish (or to tear down under
a running thread, which aborts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lsp_server.protocol import RedactFilter

LEVELS = ("debug", "info", "warning", "error")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlsp serve", description="dlsp language server (stdio by default)")
    p.add_argument("--tcp", action="store_true", help="serve over TCP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="TCP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=2087, help="TCP port (default 2087)")
    p.add_argument("--model", default=None, metavar="DIR", help="checkpoint directory (default: embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    p.add_argument("--log-level", default="info", choices=LEVELS)
    return p.parse_args(argv)


def setup_logging(level: str) -> None:
    """Log to stderr; pygls's own records are quiet (and redacted) unless debugging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level != "debug":
        handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("lsp_server", "engine"):
        logging.getLogger(name).setLevel(level.upper())
    logging.getLogger("pygls").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _protocol_stdout() -> object:
    """A private handle on the real stdout; fd 1 (and sys.stdout) now write to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # buffered: writes whole messages
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return out


SWITCH_INTERVAL_S = 0.0002


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.log_level)
    # OpenMP reads its wait policy once, when torch loads it: idle threads must sleep, not spin
    # beside the editor (engine.runtime), so this comes before anything imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from engine.runtime import configure_threads, single_arena

    # before the loading and engine threads exist: one malloc arena, whose free top malloc_trim
    # can hand back (per-thread arenas kept theirs resident beside an open document's cache)
    single_arena()
    configure_threads()
    # Syntax work and the engine's Python run on worker threads; the event loop waits for the
    # GIL up to one switch interval per hand-over (5 ms by default, several per request). At
    # 0.2 ms a request that arrives while a worker is busy is answered within ~1 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    log = logging.getLogger(__name__)
    from lsp_server import transport
    from lsp_server.server import create_server
    from lsp_server.settings import Settings

    problem = check_model_path(args.model)
    if problem:
        print(f"dlsp serve: {problem}", file=sys.stderr)
        return 2
    settings = Settings(model_path=args.model, device=args.device, log_level=args.log_level)
    ls = create_server(settings=settings)
    if args.tcp:
        if not transport.is_loopback(args.host):
            ls.bind_warning = (f"dlsp serves {args.host}:{args.port}, beyond this machine: anyone who can reach "
                               "it can read and edit the documents of the connected client")
            log.warning("%s", ls.bind_warning)
        code = transport.serve_tcp(ls, args.host, args.port,
                                   on_listening=lambda addrs: log.info("serving on %s", addrs))
    else:
        code = transport.serve_stdio(ls, sys.stdin.buffer, _protocol_stdout())
    if not ls.close(timeout=2.0):  # a model load is still inside torch: do not tear down under it
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


def check_model_path(path: str | None) -> str | None:
    """Why `--model` cannot be a checkpoint directory, or None (checked before serving, so a
    typo fails at once instead of after the client's `initialize`)."""
    if path is None:
        return None
    if not os.path.isdir(path):
        return f"--model {path}: no such directory"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return f"--model {path}: no config.json in this directory"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
