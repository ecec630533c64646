"""``isobuild status``: what each stage would do now, without doing it.

Keys are recomputed from the inputs on disk (cheap: hashes are cached by
stat) and compared with what was built.  Rows say built / stale (and which
input changed) / missing / failed (with the log) / running / killed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.infra import keys, state
from builder.infra.config import Project
from builder.infra.errors import IsobuildError
from builder.stages import glibc, kernel

if TYPE_CHECKING:
    from builder.stages import glibcrpm


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
    log: str = ""  # the log of the run the row describes, when it has one (the report embeds it)
    markers: dict[str, str] = field(default_factory=dict)  # what a boot check's guest reported

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record_row(row: Row, record: dict[str, Any], key: str, last_inputs: dict[str, Any] | None,
                inputs: dict[str, Any]) -> Row:
    """Fill a row that has no artifact for ``key`` from the stage's last record."""
    status = state.effective_status(record) if record else ""
    if status == "running":
        row.state, row.detail = "running", f"pid {record.get('pid')}, log {record.get('log')}"
    elif record.get("key") == key and status in ("failed", "interrupted", "killed"):
        row.state = status
        row.when = str(record.get("finished") or record.get("started", ""))
        row.detail = (str(record.get("error")) + "; " if record.get("error") else "") + f"log {record.get('log')}"
        row.log = str(record.get("log") or "")
    elif last_inputs is not None:
        row.state = "stale"
        row.when = str(record.get("finished", ""))
        row.detail = "; ".join(keys.changes(last_inputs, inputs)) or "inputs changed"
    return row


def _check_row(stage: str, name: str, path: Path, key: str, changed: str) -> Row:
    """A boot-check row: its verdict if it checked this key, else stale or missing."""
    record = state.load(path)
    row = Row(stage, name, "missing")
    if record is None:
        return row
    row.key = str(record.get("key", ""))[:12]
    row.when = str(record.get("finished", ""))
    row.seconds = record.get("seconds")
    row.log, row.markers = str(record.get("log") or ""), dict(record.get("markers") or {})
    if record.get("key") != key:
        row.state, row.detail = "stale", changed
    else:
        row.state = str(record.get("status", "?"))
        row.detail = "; ".join(record.get("reasons", [])) or f"{record.get('accel')}, log {record.get('log')}"
    return row


def kernel_rows(project: Project, profile: str | None = None) -> list[Row]:
    try:
        p = kernel.plan(project, profile)
    except IsobuildError as exc:
        return [Row("kernel", profile or project.settings.kernel.profile, "blocked", detail=exc.message)]
    lay = p.layout
    meta = kernel.built(p)
    rec = state.load(lay.state) or {}
    row = Row("kernel", lay.profile, "missing", key=p.key[:12])
    if meta is not None and state.effective_status(rec) != "running":
        image = p.artifact / Path(p.arch.image).name
        row.state = "built"
        row.when = str(meta.get("finished", ""))
        row.seconds = round(sum(meta.get("durations", {}).values()), 1)
        row.size = image.stat().st_size if image.exists() else None
        row.sha256 = str(meta.get("artifacts", {}).get(image.name, ""))[:12]
        row.detail = f"{meta.get('kernel_release')} in {p.artifact}"
    else:
        last = state.load(lay.artifact(str(rec.get("last_good"))) / "metadata.json") if rec.get("last_good") else None
        _record_row(row, rec, p.key, last.get("inputs", {}) if last else None, p.inputs)
    boot = _check_row("kernel-boot", lay.profile, lay.root / "state" / f"boot-{lay.profile}.json", p.key,
                      "kernel changed since this boot check")
    return [row, boot]


def glibc_rows(project: Project, p: glibc.Plan | IsobuildError | None) -> list[Row]:
    if p is None:
        return []
    if isinstance(p, IsobuildError):
        return [Row("glibc", "glibc", "blocked", detail=p.message)]
    meta = glibc.built(p)
    seconds = round(sum(meta.get("durations", {}).values()), 1) if meta else None
    return [_packages_row(Row("glibc", "glibc", "missing", key=p.key[:12]), p, meta, seconds, "debs", "libc6")]


def _packages_row(row: Row, p: glibc.Plan | glibcrpm.Plan, meta: dict[str, Any] | None, seconds: float | None,
                  kind: str, main: str) -> Row:
    """A glibc stage's row (Debian's: debs; an EL distro's: rpms): built, with the packages'
    size and ``main``'s sha256, or what its state record says."""
    rec = state.load(p.layout.state) or {}
    if meta is not None and state.effective_status(rec) != "running":
        listed = meta.get("packages" if kind == "debs" else "rpms", [])
        ours: dict[str, Any] = next((x for x in listed if x.get("package") == main), {})
        where = p.artifact / kind
        row.state, row.when, row.seconds = "built", str(meta.get("finished", "")), seconds
        row.size = sum(f.stat().st_size for f in where.glob(f"*.{kind[:-1]}")) if where.is_dir() else None
        row.sha256 = str(ours.get("sha256", ""))[:12]
        row.detail = f"{meta.get('version')}, {len(listed)} packages in {where}"
    else:
        last = state.load(p.layout.artifact(str(rec.get("last_good"))) / "metadata.json") \
            if rec.get("last_good") else None
        _record_row(row, rec, p.key, last.get("inputs", {}) if last else None, p.inputs)
    return row


def elglibc_rows(project: Project, name: str) -> list[Row]:
    """The glibc-rpm row of an EL distro that takes the patched glibc (none for others)."""
    from builder import distros, pipeline
    from builder.stages import glibcrpm

    try:
        plugin = distros.load(project, name)
    except IsobuildError:
        return []  # distro_rows reports the distro file
    if plugin.glibc_format != "rpm" or not pipeline.wants_glibc(project, plugin):
        return []
    try:
        p = glibcrpm.plan(pipeline.el_plugin(plugin))
    except IsobuildError as exc:
        return [Row(glibcrpm.STAGE, name, "blocked", detail=exc.message + (f"; {exc.hint}" if exc.hint else ""))]
    meta = glibcrpm.built(p)
    return [_packages_row(Row(glibcrpm.STAGE, name, "missing", key=p.key[:12]), p, meta,
                          meta.get("seconds") if meta else None, "rpms", "glibc")]


def distro_rows(project: Project, name: str, profile: str | None, gp: glibc.Plan | None = None) -> list[Row]:
    from builder import pipeline
    from builder.stages import iso, rootfs, smoke

    try:
        ip = pipeline.iso_plan(project, name, profile, gp)
    except IsobuildError as exc:
        return [Row("rootfs", name, "blocked", detail=exc.message)]
    rp = ip.rootfs
    rec = state.load(rp.state_path) or {}
    meta = rootfs.built(rp)
    row = Row("rootfs", name, "missing", key=rp.key[:12])
    if meta is not None:
        row.state, row.when = "built", str(meta.get("finished", ""))
        row.seconds = round(sum(meta.get("durations", {}).values()), 1)
        row.size = meta.get("sizes", {}).get("filesystem.squashfs")
        row.detail = f"{len(meta.get('packages', []))} packages, kernel {meta.get('kernel_release')}"
    else:
        last = rootfs.built_key(rp, str(rec.get("last_good"))) if rec.get("last_good") else None
        _record_row(row, rec, rp.key, last.get("inputs", {}) if last else None, rp.inputs)
    iso_rec = state.load(ip.state_path) or {}
    iso_row = Row("iso", name, "missing", key=ip.key[:12])
    done = iso.built(ip)
    if done is not None:
        iso_row.state, iso_row.when = "built", str(done.get("finished", ""))
        iso_row.size, iso_row.sha256 = done.get("size"), str(done.get("sha256", ""))[:12]
        iso_row.seconds = done.get("seconds")
        iso_row.detail = str(ip.out)
    elif iso_rec.get("status") == "ok" and iso_rec.get("key") == ip.key:
        iso_row.state, iso_row.detail = "stale", f"{ip.out} was changed or removed since it was built"
    else:
        _record_row(iso_row, iso_rec, ip.key, iso_rec.get("inputs") if iso_rec.get("status") == "ok" else None,
                    ip.inputs)
    rows = [row, iso_row]
    rows += [_check_row("smoke", f"{name}/{mode}", smoke.state_path(ip, mode), ip.key,
                        "ISO changed since this boot check") for mode in smoke.MODES]
    return rows


def kernel_profiles(project: Project) -> list[str]:
    """The configured profile first, then every other profile that has a record."""
    configured = project.settings.kernel.profile
    # profiles built earlier whose file is gone from the project are not this project's any more
    recorded = sorted(p.stem for p in (project.work_dir / "kernel" / "state").glob("*.json")
                      if not p.stem.startswith("boot-")
                      and (project.root / "profiles" / "kernel" / f"{p.stem}.yaml").exists())
    return [configured, *(name for name in recorded if name != configured)]


def rows(project: Project, profile: str | None = None) -> list[Row]:
    from builder import distros

    out = [row for name in kernel_profiles(project) for row in kernel_rows(project, name)]
    gp: glibc.Plan | IsobuildError | None = None
    if project.settings.glibc.enabled:
        try:
            gp = glibc.plan(project)  # once: every Debian-family row needs it too
        except IsobuildError as exc:
            gp = exc
    out += glibc_rows(project, gp)
    for name in distros.names(project):
        out += elglibc_rows(project, name)
        out += distro_rows(project, name, profile, gp if isinstance(gp, glibc.Plan) else None)
    return out


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
