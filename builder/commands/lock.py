"""``isobuild lock DISTRO``: resolve a distro's lock again against its mirror (builder.tools.aptlock)."""

from __future__ import annotations

from dataclasses import dataclass

from builder import distros
from builder.infra.config import Project
from builder.infra.errors import UserError
from builder.tools import aptlock


@dataclass(frozen=True)
class Refreshed:
    root: str
    arch: str
    packages: int
    changes: list[str]
    new: bool  # the lock had no section for this root and arch


def refresh(project: Project, name: str, arches: list[str] | None) -> list[Refreshed]:
    """Every root of the distro (its live root, and its build VM's when the lock has that) re-resolved for
    ``arches`` (default: every arch the distro lists), the lock rewritten."""
    plugin = distros.load(project, name)
    if not hasattr(plugin, "ensure_lock"):
        raise UserError(f"{plugin.where}: locks are made for Debian-family distros ({name} is {plugin.family})",
                        hint="an EL root's versions are its repositories' (see the README on EL builds)")
    out = []
    for arch in arches or plugin.arches():
        live = distros.load(project.with_arch(arch), name)
        roots = [live]
        vm = live.for_vm(project.settings.vm.packages)
        if (vm.name, live.deb_arch) in aptlock.read(live.lock_path):  # type: ignore[attr-defined]
            roots.append(vm)
        for root in roots:
            new, old = root.ensure_lock(refresh=True)  # type: ignore[attr-defined]
            out.append(Refreshed(root.name, arch, len(aptlock.pins(new)), aptlock.changes(old or {}, new), old is None))
    return out
