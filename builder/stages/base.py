"""The Stage contract: what every stage declares, and the one ``ensure`` that runs any of them.

A stage (kernel, glibc, glibc-rpm, rootfs, iso) is a function of its inputs: its ``key`` is a
sha256 over them and its artifact lives under the work dir by key, shared by every project that
uses the work dir.  What a *project* last did with a stage -- running, failed, the last good key --
is that project's own record, under ``<work>/projects/<id>/``, so a build in one checkout never
makes another checkout's outputs read stale and ``clean`` keeps what any checkout still uses.

A stage declares: its ``kind`` and ``instance`` (a profile, a distro) and arch; ``inputs`` and
``key``; ``artifact``; ``check()`` (cheap: everything it will need, for the preflight of a verb);
``built()``; ``build()``; its status ``row()``; what ``clean`` may drop (``clean_targets``) and the
work-dir entries it owns (``work_entries``).  Checks (the kernel boot, the ISO smoke boots) are
stages too, with ``runs`` instead of builds: they have records and rows, no artifacts.

``ensure(stage)`` is adopt-or-lock-log-build, for every stage alike.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from builder.infra import atomic, keys, lock, log, state
from builder.infra.config import Project
from builder.infra.errors import InfraError
from builder.tools import stagestore, sweep


@dataclass
class Row:
    """One line of ``isobuild status`` (and of the build report)."""

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
    arch: str = ""
    artifact: str = ""  # where the built artifact is (empty when not built)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- what a project last did ----------------------------------------------------------------

def project_id(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def records_dir(project: Project) -> Path:
    """<work>/projects/<id>/: this project's records, with project.json naming its directory."""
    path = project.work_dir / "projects" / project_id(project.root)
    marker = path / "project.json"
    if not marker.exists():
        atomic.write_json(marker, {"root": str(project.root.resolve())})
    return path


def projects(work_dir: Path) -> list[tuple[Path, Path]]:
    """(records dir, project root) of every project that recorded something in ``work_dir``."""
    out = []
    for marker in sorted((work_dir / "projects").glob("*/project.json")):
        data = state.load(marker) or {}
        out.append((marker.parent, Path(str(data.get("root", "")))))
    return out


def kept_keys(work_dir: Path) -> set[str]:
    """Every artifact key some project still points at (its last good builds): clean keeps them.
    A project whose directory is gone points at nothing any more."""
    keep: set[str] = set()
    for records, root in projects(work_dir):
        if not root.is_dir():
            continue
        for path in records.glob("*.json"):
            record = state.load(path) or {}
            for name in ("last_good", "key"):
                value = record.get(name)
                if isinstance(value, str) and value:
                    keep.add(value)
    return keep


# --- the work-dir lock, logs ------------------------------------------------------------------

@contextmanager
def locked(project: Project) -> Iterator[None]:
    """The work dir's lock, and then what killed runs left there swept away."""
    with lock.held(project.work_dir):
        sweep.sweep(project.work_dir, project.iso_dir)
        yield


def stage_log(project: Project, name: str) -> Path:
    """A new, empty log file for one stage run (never shared with another run)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    project.logs_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = project.logs_dir / (f"{name}-{stamp}.log" if n == 1 else f"{name}-{stamp}-{n}.log")
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            continue
    raise InfraError(f"{project.logs_dir}: cannot create a log file for {name}")


# --- the contract ------------------------------------------------------------------------------

class Stage(ABC):
    """One stage for one instance and arch; see the module docstring."""

    kind: ClassVar[str]
    work_entries: ClassVar[tuple[str, ...]] = ()

    def __init__(self, project: Project, instance: str, arch: str):
        self.project = project
        self.instance = instance
        self.arch = arch

    # identity
    @property
    def label(self) -> str:
        """``kernel-ci-x86_64``: the record's and the logs' name."""
        return "-".join(part for part in (self.kind, self.instance, self.arch) if part)

    @property
    @abstractmethod
    def inputs(self) -> dict[str, Any]:
        """Everything the output is a function of (a JSON document; keys.changes explains diffs)."""

    @functools.cached_property
    def key(self) -> str:
        return keys.compute(self.inputs)

    @property
    @abstractmethod
    def artifact(self) -> Path:
        """The artifact of this key (it may not exist)."""

    def artifact_for(self, key: str) -> Path:
        """The artifact of another key of this stage (the last good one, say): artifacts are named by key."""
        return self.artifact.with_name(key)

    # this project's record
    @property
    def record_path(self) -> Path:
        return records_dir(self.project) / f"{self.label}.json"

    @property
    def legacy_record(self) -> str | None:
        """Where the record lived (relative to the work dir) before records were per project."""
        return None

    def last(self) -> dict[str, Any]:
        """This project's record of the stage ({} if none): migrated once from a pre-project one."""
        record = state.load(self.record_path)
        if record is None and self.legacy_record:
            old = state.load(self.project.work_dir / self.legacy_record)
            if old is not None:
                state.save(self.record_path, old)
                record = old
        return record or {}

    def upstream(self) -> dict[str, Stage]:
        """The stages whose keys are among this one's inputs, by input name (rootfs: kernel, glibc)."""
        return {}

    def last_inputs(self) -> dict[str, Any] | None:
        """The inputs of this project's last good build of the stage."""
        good = self.last().get("last_good")
        meta = state.load(self.artifact_for(str(good)) / "metadata.json") if good else None
        return (meta or {}).get("inputs")

    def changes(self) -> list[str]:
        """What changed since this project's last good build, in words, following a changed key down
        to the stage it belongs to: "rootfs: kernel: patches: 0003-x.patch changed"."""
        old = self.last_inputs()
        if old is None:
            return []
        out = []
        ups = self.upstream()
        for line in keys.changes(old, self.inputs):
            name = line.split(":", 1)[0].split(".", 1)[0]
            if name in ups and ups[name] is not None:
                deeper = ups[name].changes()
                out += [f"{name}: {d}" for d in deeper] or [line]
            else:
                out.append(line)
        return out

    def current(self) -> Path | None:
        """The artifact this project last built (or reused) successfully."""
        good = self.last().get("last_good")
        return self.artifact_for(str(good)) if good else None

    # the contract
    def check(self) -> None:
        """Cheap validation of everything the build will need (default: the inputs resolve)."""
        self.key  # noqa: B018 (computing the inputs validates them)

    def built(self) -> dict[str, Any] | None:
        """The metadata of the artifact with this key, if it exists."""
        return state.load(self.artifact / "metadata.json")

    def adopt(self) -> bool:
        """This key is built: make it this project's last good one.  True when that changed."""
        record = self.last()
        if record.get("last_good") == self.key and record.get("status") == "ok":
            return False
        state.save(self.record_path, dict(record, stage=self.kind, key=self.key, status="ok", last_good=self.key,
                                          inputs=self.inputs, finished=state.now(), error=None, hint=None))
        self.link_current()
        return True

    def link_current(self) -> None:
        """<work>/projects/<id>/current/<label>: where a person finds this project's last good artifact."""
        link = records_dir(self.project) / "current" / self.label
        atomic.symlink(os.path.relpath(self.artifact, link.parent), link)

    @abstractmethod
    def build(self, log_path: Path) -> dict[str, Any]:
        """Build the artifact of this key; return its metadata (ensure keeps the record)."""

    def record_extras(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Fields to keep in the record after a good build (e.g. what the next build's progress reads)."""
        return {"durations": meta.get("durations"), "steps_last_build": meta.get("steps")}

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        """(size, sha256, detail) of a built artifact for its status row."""
        return None, "", str(self.artifact)

    def row(self) -> Row:
        """The status row: built / stale (what changed) / missing / failed / running / killed."""
        try:
            meta = self.built()
        except OSError:
            meta = None
        record = self.last()
        row = Row(self.kind, self.instance or self.kind, "missing", key=self.key[:12], arch=self.arch)
        if meta is not None and state.effective_status(record) != "running":
            row.state, row.when = "built", str(meta.get("finished", ""))
            durations = meta.get("durations") or {}
            row.seconds = round(sum(durations.values()), 1) if durations else meta.get("seconds")
            row.size, row.sha256, row.detail = self.summary(meta)
            row.sha256 = row.sha256[:12]
            row.artifact = str(self.artifact)
            return row
        row = record_row(row, record, self.key, self.last_inputs(), self.inputs)
        if row.state == "stale":
            row.detail = "; ".join(self.changes()) or row.detail
        return row

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        """What ``clean`` may drop: build trees and artifacts no project points at."""
        return []


def record_row(row: Row, record: dict[str, Any], key: str, last_inputs: dict[str, Any] | None,
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


class PlannedStage(Stage):
    """A stage whose inputs, key and artifact come from a plan (an object with ``inputs``, ``key`` and
    ``artifact``), made once by ``make_plan`` -- resolving every input, changing nothing."""

    @abstractmethod
    def make_plan(self) -> Any: ...

    @functools.cached_property
    def plan(self) -> Any:
        return self.make_plan()

    @property
    def inputs(self) -> dict[str, Any]:
        return self.plan.inputs  # type: ignore[no-any-return]

    @functools.cached_property
    def key(self) -> str:
        return str(self.plan.key)

    @property
    def artifact(self) -> Path:
        return self.plan.artifact  # type: ignore[no-any-return]


def keyed_targets(root: Path, keep: set[str]) -> list[Path]:
    """A keyed stage's build trees and every artifact no project points at (nor a link from before
    records were per project: <root>/current, <root>/current/<profile>)."""
    current = root / "current"
    links = [current] if current.is_symlink() else [p for p in current.glob("*") if p.is_symlink()]
    keep = keep | {link.resolve().name for link in links}
    return [p for p in (root / "artifacts").glob("*") if p.name not in keep] + list((root / "trees").glob("*"))


class Check:
    """A check of a stage's output (a boot of a kernel, of an ISO in one mode): this project's record
    of its verdict and its status row; no artifact."""

    kind: ClassVar[str]
    changed = "its stage changed since this check"

    def __init__(self, of: Stage, mode: str = ""):
        self.of = of
        self.mode = mode

    @property
    def name(self) -> str:
        return f"{self.of.instance}/{self.mode}" if self.mode else self.of.instance

    @property
    def record_path(self) -> Path:
        label = "-".join(x for x in (self.kind, self.of.instance, self.of.arch, self.mode) if x)
        return records_dir(self.of.project) / f"{label}.json"

    @property
    def legacy_record(self) -> str | None:
        return None

    def last(self) -> dict[str, Any] | None:
        record = state.load(self.record_path)
        if record is None and self.legacy_record:
            record = state.load(self.of.project.work_dir / self.legacy_record)
        return record

    def save(self, verdict: dict[str, Any]) -> None:
        state.save(self.record_path, {"stage": self.kind, "name": self.name, "arch": self.of.arch, "mode": self.mode,
                                      "key": self.of.key, "finished": state.now(), **verdict})

    def row(self) -> Row:
        """Its verdict if it checked this key of its stage, else stale or missing."""
        record = self.last()
        row = Row(self.kind, self.name, "missing", arch=self.of.arch)
        if record is None:
            return row
        row.key = str(record.get("key", ""))[:12]
        row.when = str(record.get("finished", ""))
        row.seconds = record.get("seconds")
        row.log, row.markers = str(record.get("log") or ""), dict(record.get("markers") or {})
        if record.get("key") != self.of.key:
            row.state, row.detail = "stale", self.changed
        else:
            row.state = str(record.get("status", "?"))
            row.detail = "; ".join(record.get("reasons", [])) or f"{record.get('accel')}, log {record.get('log')}"
        return row


S = TypeVar("S", bound=Stage)


@dataclass
class Ensured(Generic[S]):
    stage: S
    meta: dict[str, Any]
    built_now: bool


def ensure(stage: S, force: bool = False, fields: dict[str, Any] | None = None) -> Ensured[S]:
    """Adopt the artifact of the stage's key if it exists (unless ``force``), else build it under the
    work-dir lock, logged, with this project's record kept from start to end (a killed build
    explains itself)."""
    project = stage.project
    meta = None if force else (stage.built() or pulled(stage))
    if meta is not None:
        with locked(project):
            switched = stage.adopt()
        log.get().info(f"{stage.kind}.up-to-date", name=stage.instance, arch=stage.arch, key=stage.key[:12],
                       reused_earlier_build=switched)
        push(stage)  # a store that lacks it (a new CI cache key) gets it
        return Ensured(stage, meta, False)
    with locked(project):
        log_path = stage_log(project, stage.label)
        previous = stage.last()
        base = {"stage": stage.kind, "name": stage.instance, "arch": stage.arch, "key": stage.key,
                "log": str(log_path), "inputs": stage.inputs, "last_good": previous.get("last_good"),
                **{k: v for k, v in previous.items() if k.endswith("_last_build")}, **(fields or {})}
        with log.stage(stage.kind, instance=stage.instance, arch=stage.arch, key=stage.key[:12], log=str(log_path)), \
                state.recorded(stage.record_path, base) as done:
            meta = stage.build(log_path)
            done.update(last_good=stage.key, **stage.record_extras(meta))
        stage.link_current()
        push(stage)
    return Ensured(stage, meta, True)


# --- the shared stage store (builder.tools.stagestore) -------------------------------------------

def store_of(stage: Stage) -> tuple[stagestore.Store, bool] | None:
    """The project's stage store and whether to push into it, for a stage whose artifact is a directory
    of the work dir (the ISO, published into the project, is remade from its rootfs in seconds)."""
    found = stage.project.stage_store()
    if found is None or stage.project.work_dir.resolve() not in stage.artifact.resolve().parents:
        return None
    return stagestore.Store(found[0], stagestore.secret_from_env()), found[1]


def pulled(stage: Stage) -> dict[str, Any] | None:
    """The stage's artifact pulled from the shared store (its metadata), or None: no store, no entry,
    or an entry refused by verification (a warning names it; the stage is then built)."""
    found = store_of(stage)
    if found is None or not found[0].has(stage.kind, stage.key):
        return None
    store, may_push = found
    with locked(stage.project):
        meta = stage.built()
        if meta is not None:  # another run put it there meanwhile
            return meta
        try:
            with log.stage("cache.pull", stage=stage.label, key=stage.key[:12], store=str(store.root)):
                store.pull(stage.kind, stage.key, stage.artifact)
        except stagestore.Refused as exc:
            log.get().warning("cache.refused", stage=stage.label, key=stage.key[:12], reason=exc.message,
                              then="building it here" + ("; the entry is replaced" if may_push else ""))
            if may_push:
                store.discard(stage.kind, stage.key)
            return None
        meta = stage.built()
        if meta is None or meta.get("key", stage.key) != stage.key:
            shutil.rmtree(stage.artifact, ignore_errors=True)
            log.get().warning("cache.refused", stage=stage.label, key=stage.key[:12],
                              reason="the pulled artifact's metadata.json is not this key's", then="building it here")
            return None
    return meta


def push(stage: Stage) -> None:
    """A stage just built here put into the shared store when the project pushes (a failure to push is
    a warning: the build stands)."""
    found = store_of(stage)
    if found is None or not found[1] or found[0].has(stage.kind, stage.key):
        return
    store = found[0]
    try:
        with log.stage("cache.push", stage=stage.label, key=stage.key[:12], store=str(store.root)):
            store.push(stage.kind, stage.key, stage.artifact)
    except InfraError as exc:
        log.get().warning("cache.push-failed", stage=stage.label, key=stage.key[:12], reason=exc.message)

