"""``isobuild cache``: the shared stage store (builder.tools.stagestore) seen from a project.

Builds pull from and push to the store by themselves (``stages.base.ensure``); these verbs list it,
push what this project already built (seeding a new store), and prune it to what the projects of
this work dir use (a CI cache that would otherwise grow with every changed key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.commands import status
from builder.infra import log, state
from builder.infra.config import Project
from builder.infra.errors import InfraError, UserError
from builder.stages.base import kept_keys, records_dir
from builder.tools import stagestore


@dataclass(frozen=True)
class Current:
    label: str
    kind: str
    key: str
    artifact: Path


def store(project: Project) -> tuple[stagestore.Store, bool]:
    found = project.stage_store()
    if found is None:
        raise UserError("no stage store is configured", hint="set cache.store in isobuild.yaml or ISOBUILD_CACHE_STORE")
    return stagestore.Store(found[0], stagestore.secret_from_env()), found[1]


def current(project: Project) -> list[Current]:
    """This project's last good artifacts that live in the work dir, by stage label."""
    records = records_dir(project)
    work = project.work_dir.resolve()
    out = []
    for link in sorted((records / "current").glob("*")):
        record = state.load(records / f"{link.name}.json") or {}
        target = link.resolve()
        kind = record.get("stage")
        if isinstance(kind, str) and work in target.parents and (target / "metadata.json").is_file():
            out.append(Current(link.name, kind, target.name, target))
    return out


def push_all(project: Project) -> list[tuple[Current, str]]:
    """Every current artifact of this project put into the store: (artifact, "pushed", "had" or why it
    could not be pushed) -- one that cannot be stored does not stop the others."""
    st, _ = store(project)
    done = []
    for item in current(project):
        try:
            with log.stage("cache.push", stage=item.label, key=item.key[:12], store=str(st.root)):
                done.append((item, "pushed" if st.push(item.kind, item.key, item.artifact) else "had"))
        except InfraError as exc:
            done.append((item, exc.message))
    return done


def prune(project: Project, dry_run: bool) -> list[stagestore.Entry]:
    """Entries no project of this work dir points at (its last good builds), removed."""
    st, _ = store(project)
    keep = kept_keys(project.work_dir)
    doomed = [e for e in st.entries() if e.key not in keep]
    if not dry_run:
        for entry in doomed:
            st.discard(entry.kind, entry.key)
            log.get().info("cache.pruned", kind=entry.kind, key=entry.key[:12], bytes=entry.size)
    return doomed


def render(project: Project) -> str:
    st, push = store(project)
    mine = {c.key: c.label for c in current(project)}
    entries = st.entries()
    lines = [f"stage store {st.root} ({'push' if push else 'pull only'}): {len(entries)} entries, "
             f"{sum(e.size for e in entries) / 2**20:.1f} MiB"]
    for e in entries:
        lines.append(f"  {e.kind:<16} {e.key[:12]}  {e.size / 2**20:>9.1f} MiB  {mine.get(e.key, '')}")
    return "\n".join(lines)


def stage_key(project: Project, stage: str, name: str | None, profile: str | None, arch: str | None) -> str:
    """A stage's key (the 12 characters status shows) computed from the inputs on disk: what a CI cache
    entry of that stage is keyed by.  ``name``: the instance (default: a kernel's profile, else the
    stage's first row)."""
    arch = arch or project.settings.arch
    if stage == "kernel" and name is None:
        name = profile or project.settings.kernel.profile
    for row in status.rows(project, profile, arch):
        if row.stage == stage and row.arch == arch and (name is None or row.name == name) and row.key:
            return row.key
    raise UserError(f"no stage {stage}{' ' + name if name else ''} ({arch}) with a key in this project",
                    hint="isobuild status --json lists every stage, its name and key")
