"""Host tools the pipeline needs: who needs them, how to check, what to install.

The table is the single source for ``isobuild doctor``, the runner's
"command not found" hint and the set-up script (``doctor --install``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.distros.el import resolve_build
from builder.infra import runner, sandbox
from builder.infra.arch import ARCHES
from builder.infra.config import Project
from builder.infra.hosttools import TOOLS, Tool, apt_line, install_hint
from builder.stages import glibc
from builder.tools import foreign

__all__ = ["TOOLS", "Tool", "apt_line", "binfmt", "binfmt_hint", "el_build", "enable_binfmt", "glibc_build_deps",
           "install", "install_hint", "missing", "namespaces", "tools"]

_KERNEL_SOURCE = "/usr/src/linux-source-6.1.tar.xz"  # the table's entry for the default kernel.source


def tools(project: Project | None) -> list[Tool]:
    """The table, with the kernel source the project's settings name (kernel.source.package, when
    it is a Debian package) instead of the default's."""
    out = []
    for tool in TOOLS:
        if tool.name == _KERNEL_SOURCE and project is not None:
            source = project.settings.kernel.source
            if source.type != "debian":
                continue
            tool = Tool(f"/usr/src/{source.package}.tar.xz", source.package, tool.used_by)
        out.append(tool)
    return out


def missing(table: list[Tool] | None = None) -> list[Tool]:
    return [t for t in (TOOLS if table is None else table) if not t.present()]


def install(tools: list[Tool], log_path: Path) -> None:
    if not tools:
        return
    packages = sorted({t.package for t in tools})
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    runner.run(["apt-get", "update", "-q"], log_path=log_path, env=env)
    runner.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
               log_path=log_path, env=env)


def glibc_build_deps(control: Path, profiles: list[str]) -> list[str] | None:
    """glibc's unmet build dependencies (None: its packaging or dpkg-checkbuilddeps is not installed yet;
    the tool table says so)."""
    if not control.exists() or shutil.which("dpkg-checkbuilddeps") is None:
        return None
    return glibc.unmet_build_deps(control, profiles)


def el_build() -> tuple[str, str]:
    """How ``build: auto`` installs an EL root on this host: (mock | dnf, why)."""
    return resolve_build("auto")


def namespaces() -> tuple[bool, str]:
    """Whether this host lets isobuild run a root's commands in namespaces (as this user): (ok, why)."""
    return sandbox.probe()


def binfmt_hint() -> str:
    """The commands that enable every other arch's programs here."""
    return foreign.enable_hint([a for a in ARCHES.values() if not a.native()])


def binfmt() -> dict[str, str | None]:
    """Per other arch, None when its programs run here (a foreign root), else what is missing."""
    return foreign.states()


def enable_binfmt(log_path: Path) -> None:
    foreign.enable(log_path)
