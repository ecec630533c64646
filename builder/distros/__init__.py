"""The distro registry: ``distros/<name>.yaml`` -> a validated plugin."""

from __future__ import annotations

from typing import Any

from builder.distros.base import Plugin
from builder.distros.debian import DebianPlugin, DebianSettings
from builder.distros.el import ELPlugin, ELSettings
from builder.infra import schema
from builder.infra.config import Project
from builder.infra.errors import UserError

FAMILIES: dict[str, tuple[type[Plugin], type[Any]]] = {
    "debian": (DebianPlugin, DebianSettings),
    "el": (ELPlugin, ELSettings),
}


def names(project: Project) -> list[str]:
    return sorted(p.stem for p in (project.root / "distros").glob("*.yaml"))


def enabled(project: Project) -> list[str]:
    """The distros ``isobuild isos`` builds: every file whose settings do not say ``enabled: false``."""
    return [name for name in names(project) if getattr(load(project, name).settings, "enabled", True)]


def load(project: Project, name: str) -> Plugin:
    path = project.root / "distros" / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown distro {name!r}: {path} not found",
                        hint="known distros: " + (", ".join(names(project)) or "none"))
    data = schema.read_yaml(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: (top level): expected a mapping")
    family = data.get("family", name)
    if family not in FAMILIES:
        raise UserError(f"{path.name}: family: {family!r} is not one of {', '.join(sorted(FAMILIES))}")
    plugin_type, settings_type = FAMILIES[family]
    settings = schema.load(settings_type, data, path.name)
    return plugin_type(name, settings, project)
