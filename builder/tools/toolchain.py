"""Which compiler a build uses: its first ``--version`` line, part of every compiled stage's key."""

from __future__ import annotations

from builder.infra import runner


def gcc_version(prefix: str = "") -> str:
    """``gcc --version``'s first line (``prefix`` names a cross compiler: aarch64-linux-gnu-)."""
    return runner.output([f"{prefix}gcc", "--version"]).splitlines()[0].strip()
