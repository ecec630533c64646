"""``isobuild report``: the build as one static HTML page a person opens in a browser.

The stage rows are ``isobuild status``'s (nothing is recomputed here); the
page adds what a row only points at: each boot check's console log, the
log tail of a failed stage, each ISO's manifest (packages, kernel, patches)
and the patch series on disk with their sha256s.  One self-contained file:
styles inline, no scripts, no external assets; every text from a log or a
manifest is HTML-escaped (the template autoescapes).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from builder import __version__
from builder.commands import status
from builder.infra import atomic, state
from builder.infra.config import Project
from builder.infra.errors import IsobuildError
from builder.tools import quilt

CHECK_STAGES = ("kernel-boot", "smoke")
FAILED_STATES = ("failed", "interrupted", "killed")
LOG_LIMIT = 512 * 1024  # bytes of one console log embedded; the tail is kept (the verdict is at the end)
FAILED_TAIL = 200  # lines of a failed stage's log


@dataclass
class Log:
    path: str
    text: str | None  # None: the file is gone (a CI job that did not keep it, say)
    truncated: bool = False

    @property
    def lines(self) -> int:
        return self.text.count("\n") if self.text else 0


@dataclass
class Stage:
    row: status.Row
    log: Log | None = None  # a boot check's console log, a failed stage's log tail


@dataclass
class Iso:
    distro: str
    manifest_path: str
    manifest: dict[str, Any] | None  # None: unreadable


@dataclass
class Series:
    component: str
    directory: str
    patches: list[quilt.Patch] = field(default_factory=list)
    error: str = ""


@dataclass
class Report:
    project: Project
    generated: str
    stages: list[Stage]
    isos: list[Iso]
    series: list[Series]
    version: str = __version__

    @property
    def checks(self) -> list[Stage]:
        return [s for s in self.stages if s.row.stage in CHECK_STAGES]

    @property
    def failed(self) -> list[Stage]:
        return [s for s in self.stages if s.row.state in FAILED_STATES]

    @property
    def counts(self) -> list[tuple[str, int]]:
        return sorted(Counter(s.row.state for s in self.stages).items())


def default_path(project: Project) -> Path:
    """iso/report.html: beside the ISOs it describes, so publishing iso/ publishes both."""
    return project.iso_dir / "report.html"


def read_log(path: str, limit: int = LOG_LIMIT, tail_lines: int | None = None) -> Log:
    file = Path(path)
    try:
        with file.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return Log(path, None)
    text = data.decode("utf-8", errors="replace")
    truncated = size > limit
    if truncated:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    if tail_lines is not None and text.count("\n") > tail_lines:
        text, truncated = "\n".join(text.splitlines()[-tail_lines:]) + "\n", True
    return Log(path, text, truncated)


def _stages(rows: list[status.Row]) -> list[Stage]:
    out = []
    for row in rows:
        log = None
        if row.log and row.stage in CHECK_STAGES:
            log = read_log(row.log)
        elif row.log and row.state in FAILED_STATES:
            log = read_log(row.log, tail_lines=FAILED_TAIL)
        out.append(Stage(row, log))
    return out


def _isos(project: Project) -> list[Iso]:
    out = []
    for path in sorted(project.iso_dir.glob("*/*.manifest.json")):
        if path.name.startswith("."):
            continue
        out.append(Iso(path.parent.name, str(path.relative_to(project.root)), state.load(path)))
    return out


def _series(project: Project) -> list[Series]:
    dirs = [("kernel", project.settings.kernel.patches)]
    if project.settings.glibc.enabled:
        dirs.append(("glibc", project.settings.glibc.patches))
        if project.settings.glibc.packaging_patches:
            dirs.append(("glibc packaging", project.settings.glibc.packaging_patches))
    out = []
    for component, directory in dirs:
        entry = Series(component, directory)
        try:
            entry.patches = quilt.read_series(project.path(directory))
        except IsobuildError as exc:
            entry.error = exc.message
        out.append(entry)
    return out


def collect(project: Project, profile: str | None = None) -> Report:
    return Report(project, state.now(), _stages(status.rows(project, profile)), _isos(project), _series(project))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("builder", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["size"] = status.human
    env.filters["json"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
    return env


def render(report: Report) -> str:
    return _environment().get_template("report.html.j2").render(report=report)


def write(project: Project, out: Path, profile: str | None = None) -> Report:
    report = collect(project, profile)
    atomic.write_text(out, render(report))
    return report
