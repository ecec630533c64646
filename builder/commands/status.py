"""``isobuild status``: what each stage would do now, without doing it.

Keys are recomputed from the inputs on disk (cheap: hashes are cached by
stat) and compared with what this project built.  Rows say built / stale (and
which input changed) / missing / failed (with the log) / running / killed /
blocked (an input cannot even be read).  The rows come from the stage graph
(builder.distros.graph): no stage is spelled out here.
"""

from __future__ import annotations

from builder.commands import vm
from builder.distros import graph
from builder.infra.arch import ARCHES
from builder.infra.config import Project
from builder.stages.base import Row, records_dir

__all__ = ["Row", "recorded_kernels", "rows", "table", "vm_rows"]


def recorded_kernels(project: Project) -> list[tuple[str, str]]:
    """(profile, arch) of each kernel this project has a record of (named kernel-<profile>-<arch>,
    builder.stages.base.Stage.label), and the work dir's from before records were per project
    (x86_64 then)."""
    found: set[tuple[str, str]] = set()
    for path in records_dir(project).glob("kernel-*.json"):
        if path.name.startswith(("kernel-boot-", "kernel-package-")):
            continue
        profile, _, arch = path.stem.removeprefix("kernel-").rpartition("-")
        if profile and arch in ARCHES:
            found.add((profile, arch))
    found |= {(p.stem, "x86_64") for p in (project.work_dir / "kernel" / "state").glob("*.json")
              if not p.stem.startswith("boot-")}
    return sorted(found)


def rows(project: Project, profile: str | None = None, arch: str | None = None) -> list[Row]:
    """Every stage's row for ``arch`` (default: the configured arch, then each other arch this
    project has built a kernel for)."""
    recorded = recorded_kernels(project)
    arches = [arch] if arch else list(dict.fromkeys([project.settings.arch, *(a for _, a in recorded)]))
    out: list[Row] = []
    for one in arches:
        out += graph.rows(project, profile, [p for p, a in recorded if a == one], one)
    return out + vm_rows(project, arch)


def vm_rows(project: Project, arch: str | None = None) -> list[Row]:
    """The project's build VMs (builder.commands.vm): running, stopped or dead, as QEMU's process says."""
    return [Row("vm", str(r["name"]), str(r["state"]), arch=str(r["arch"]), when=str(r["started"]),
                detail=f"ssh 127.0.0.1:{r['port']}, pid {r['pid'] or '-'}, {r['distro']} image {r['image_key']}"
                       + (", snapshot" if r["snapshot"] else ""))
            for r in vm.rows(project) if arch is None or r["arch"] == arch]


def human(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def table(all_rows: list[Row]) -> str:
    head = ["STAGE", "NAME", "ARCH", "STATE", "KEY", "WHEN", "SECONDS", "SIZE", "SHA256", "DETAIL"]
    body = [[r.stage, r.name, r.arch, r.state, r.key, r.when, "" if r.seconds is None else f"{r.seconds:.1f}",
             human(r.size), r.sha256, r.detail] for r in all_rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)) + "  " + cells[-1])
    return "\n".join(line.rstrip() for line in lines)
