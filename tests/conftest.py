"""Shared fixtures: a throwaway isobuild project around the fake kernel tree."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from builder import cli

FAKELINUX = Path(__file__).parent / "orchestration" / "fakelinux"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _logging_per_test() -> Iterator[None]:
    """A test that ran the CLI left structlog writing to its captured (now closed)
    stderr; the next test's events must not go there."""
    yield
    structlog.reset_defaults()


def make_patch(path: str, old: str, new: str, header: str = "") -> str:
    diff = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                f"a/{path}", f"b/{path}")
    return header + "".join(diff)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_series(directory: Path, patches: dict[str, str]) -> None:
    """Make ``directory`` hold exactly ``patches`` (name: text), in that order in its series file."""
    for old in directory.glob("*.patch"):
        old.unlink()
    for name, text in patches.items():
        (directory / name).write_text(text)
    (directory / "series").write_text("".join(f"{n}\n" for n in patches))


@dataclass
class FakeProject:
    root: Path
    work: Path
    tarball: Path

    @property
    def patches(self) -> Path:
        return self.root / "patches" / "kernel"

    def settings(self) -> Any:
        return yaml.safe_load((self.root / "isobuild.yaml").read_text())

    def write_settings(self, data: dict) -> None:  # type: ignore[type-arg]
        (self.root / "isobuild.yaml").write_text(yaml.safe_dump(data))

    def set_series(self, patches: dict[str, str]) -> None:
        write_series(self.patches, patches)

    def run(self, *args: str) -> int:
        return cli.main(["-c", str(self.root / "isobuild.yaml"), *args])

    def record_path(self, label: str) -> Path:
        return record_path(self.root, self.work, label)

    def record(self, label: str) -> Any:
        return json.loads(self.record_path(label).read_text())

    def current(self, label: str) -> Path:
        return current(self.root, self.work, label)


def records(root: Path, work: Path) -> Path:
    """Where this project's records are in ``work`` (builder.stages.base.records_dir)."""
    return work / "projects" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def record_path(root: Path, work: Path, label: str) -> Path:
    return records(root, work) / f"{label}.json"


def current(root: Path, work: Path, label: str) -> Path:
    """The project's last good artifact of a stage (e.g. label kernel-ci-x86_64), resolved."""
    return (records(root, work) / "current" / label).resolve()


STAGE_KINDS = ("kernel", "kernel-package", "glibc", "glibc-rpm", "rootfs", "iso")


class Events:
    """What isobuild logged to logs/isobuild.jsonl after this object was made: the way to assert that
    nothing was rebuilt (by what ran, not by how long it took)."""

    def __init__(self, logs_dir: Path):
        self.path = logs_dir / "isobuild.jsonl"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new(self) -> list[dict]:  # type: ignore[type-arg]
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]

    def built(self) -> set[str]:
        """The stages that started a build."""
        return {e["event"][:-len(".start")] for e in self.new() if e["event"].endswith(".start")
                and e["event"][:-len(".start")] in STAGE_KINDS}

    def commands(self) -> list[str]:
        """The commands run (the program's name; a wrapped command's own, not unshare)."""
        out = []
        for e in self.new():
            if e["event"] == "run":
                argv = e.get("argv") or []
                out.append(Path(argv[0]).name if argv else "")
        return out


XSC_PATCH = make_patch("drivers/xsc.c", "/* fake driver */\nint xsc;\n",
                       "/* fake driver */\nint xsc;\nint xsc_version = 1;\n", "Subject: xsc v1\n\n")


@pytest.fixture
def fake_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProject]:
    tarball = tmp_path / "linux-fake.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(FAKELINUX, arcname="linux-fake")
    root = tmp_path / "project"
    (root / "patches" / "kernel").mkdir(parents=True)
    (root / "profiles" / "kernel").mkdir(parents=True)
    (root / "profiles" / "kernel" / "ci.yaml").write_text("base: tinyconfig\nfragments: [ci.config]\n")
    (root / "profiles" / "kernel" / "ci.config").write_text(
        "# fake ci profile\nCONFIG_FAKE_BASE=y\nCONFIG_FAKE_FEATURE=y\n")
    (root / "patches" / "kernel" / "xsc.config").write_text("CONFIG_FAKE_XSC=y\n")
    work = tmp_path / "work"
    project = FakeProject(root, work, tarball)
    project.write_settings({
        "work_dir": str(work),
        "kernel": {
            "source": {"type": "tarball", "path": str(tarball), "sha256": sha256(tarball)},
            "profile": "ci",
            "fragments": ["patches/kernel/xsc.config"],
        },
        "glibc": {"enabled": False},  # the glibc stage has its own fake (test_glibc_fake.py)
    })
    project.set_series({"0001-xsc.patch": XSC_PATCH})
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    monkeypatch.chdir(root)
    yield project
    os.chdir(REPO)


def write_lock(root: Path, pins: dict[str, tuple[str, str]], distro: str = "debian", arch: str = "x86_64") -> None:
    """A lock for a project's Debian distro (its live root and its build VM's) naming ``pins`` (package ->
    version, package arch), resolved for the distro's settings as they are: a fake mirror serves no
    root a simulation could resolve."""
    from builder import distros
    from builder.infra.config import load_project
    from builder.tools import aptlock

    project = load_project(root / "isobuild.yaml").with_arch(arch)
    live = distros.load(project, distro)
    sections = aptlock.read(live.lock_path)  # type: ignore[attr-defined]
    for plugin in (live, live.for_vm(project.settings.vm.packages)):
        section = {name: aptlock.Pin(name, version, own) for name, (version, own) in pins.items()}
        section[aptlock.REQUEST] = aptlock.request(plugin.suite, plugin.settings.components,  # type: ignore[attr-defined]
                                                   plugin.packages())  # type: ignore[attr-defined]
        sections[(plugin.name, plugin.deb_arch)] = section  # type: ignore[attr-defined]
    aptlock.write(live.lock_path, sections)  # type: ignore[attr-defined]
