"""`dlsp` subcommands. Each lives in the package that owns it and is imported only when used,
so `dlsp serve` does not pay for training code and `dlsp --help` is instant."""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> ("module:function", one-line help). The function takes argv (list[str]) and
# returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("editor_clients.headless.demo:main", "scripted editing run through the real server (prints completions and latencies)"),
    "serve": ("lsp_server.__main__:main", "run the language server (stdio, or --tcp on 127.0.0.1)"),
    "complete": ("lsp_server.cli_complete:main", "fill the hole at FILE:LINE:COL and print it with timings"),
    "profile": ("editor_clients.headless.profile:main", "replay typing traces through the server and report latency"),
    "build-corpus": ("engine.training.corpus:main", "build the training corpus from permissively licensed local source"),
    "train-tokenizer": ("engine.training.tokenizer_train:main", "train the byte-level BPE tokenizer"),
    "train": ("engine.training.train:main", "train a masked-diffusion model (torchrun-compatible)"),
    "eval": ("engine.evaluation.run:main", "evaluate fill-in-the-middle quality on held-out packages"),
    "cache": ("engine.assembly:cache_main", "list the assembled models in the cache (~/.cache/dlsp), or --clear them"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: dlsp <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dlsp: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # every command may run beside an editor, a training run or the test suite on a few cores:
    # OpenMP's idle threads must sleep, not spin (spinning threads of two torch processes on 2
    # cores made each ~10x slower); read once, when torch loads, so set before any import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
