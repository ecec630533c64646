"""``isobuild status``: what each stage would do now, without doing it.

Keys are recomputed from the inputs on disk (cheap: hashes are cached by
stat) and compared with what was built.  Rows say built / stale (and which
input changed) / missing / failed (with the log) / running / killed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder import kernel, stagekey, state
from builder.config import Project
from builder.errors import IsobuildError


@dataclass
class Row:
    stage: str
    name: str
    state: str
    key: str = ""
    when: str = ""
    seconds: float | None = None
    size: int | None = None
    sha256: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel_rows(project: Project, profile: str | None = None) -> list[Row]:
    try:
        p = kernel.plan(project, profile)
    except IsobuildError as exc:
        return [Row("kernel", profile or project.settings.kernel.profile, "blocked", detail=exc.message)]
    lay = p.layout
    meta = kernel.built(p)
    rec = state.load(lay.state) or {}
    status = state.effective_status(rec) if rec else ""
    row = Row("kernel", lay.profile, "missing", key=p.key[:12])
    if status == "running":
        row.state, row.detail = "running", f"pid {rec.get('pid')}, log {rec.get('log')}"
    elif meta is not None:
        image = p.artifact / Path(p.arch.image).name
        row.state = "built"
        row.when = str(meta.get("finished", ""))
        row.seconds = round(sum(meta.get("durations", {}).values()), 1)
        row.size = image.stat().st_size if image.exists() else None
        row.sha256 = str(meta.get("artifacts", {}).get(image.name, ""))[:12]
        row.detail = f"{meta.get('kernel_release')} in {p.artifact}"
    elif rec.get("key") == p.key and status in ("failed", "interrupted", "killed"):
        row.state = status
        row.when = str(rec.get("finished") or rec.get("started", ""))
        row.detail = (str(rec.get("error")) + "; " if rec.get("error") else "") + f"log {rec.get('log')}"
    else:
        last = state.load(lay.artifact(str(rec.get("last_good"))) / "metadata.json") if rec.get("last_good") else None
        if last is not None:
            row.state = "stale"
            row.when = str(last.get("finished", ""))
            row.detail = "; ".join(stagekey.changes(last.get("inputs", {}), p.inputs)) or "inputs changed"
    rows = [row]
    boot = state.load(lay.root / "state" / f"boot-{lay.profile}.json")
    boot_row = Row("kernel-boot", lay.profile, "missing")
    if boot is not None:
        fresh = boot.get("key") == p.key
        boot_row.state = (boot.get("status", "?") if fresh else "stale")
        boot_row.key = str(boot.get("key", ""))[:12]
        boot_row.when = str(boot.get("finished", ""))
        boot_row.seconds = boot.get("seconds")
        boot_row.detail = "; ".join(boot.get("reasons", [])) or f"{boot.get('accel')}, log {boot.get('log')}"
        if not fresh:
            boot_row.detail = "kernel changed since this boot check"
    rows.append(boot_row)
    return rows


def kernel_profiles(project: Project) -> list[str]:
    """The configured profile first, then every other profile that has a record."""
    configured = project.settings.kernel.profile
    recorded = sorted(p.stem for p in (project.work_dir / "kernel" / "state").glob("*.json")
                      if not p.stem.startswith("boot-"))
    return [configured, *(name for name in recorded if name != configured)]


def rows(project: Project) -> list[Row]:
    return [row for name in kernel_profiles(project) for row in kernel_rows(project, name)]


def _human(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def table(all_rows: list[Row]) -> str:
    head = ["STAGE", "NAME", "STATE", "KEY", "WHEN", "SECONDS", "SIZE", "SHA256", "DETAIL"]
    body = [[r.stage, r.name, r.state, r.key, r.when, "" if r.seconds is None else f"{r.seconds:.1f}",
             _human(r.size), r.sha256, r.detail] for r in all_rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)) + "  " + cells[-1])
    return "\n".join(line.rstrip() for line in lines)
