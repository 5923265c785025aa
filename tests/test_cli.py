"""The `dlsp` entry point."""

from __future__ import annotations

import os

from dlsp import cli


def test_every_command_runs_with_sleeping_openmp_threads(monkeypatch):
    """Spinning OpenMP threads of two torch processes on 2 cores made each ~10x slower: the entry
    point sets the passive wait policy before a command imports torch (unless the user set one)."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "probe", ("builtins:len", "a command that returns len(argv)"))
    assert cli.main(["probe"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["probe", "x"]) == 1
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stands
    assert cli.main(["no-such-command"]) == 2
