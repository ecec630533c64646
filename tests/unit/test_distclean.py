"""isobuild distclean: everything isobuild made goes (caches too), nothing else does, and a
work or logs dir that could be somebody else's is refused before anything is touched."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder import cli
from builder.infra import lock
from builder.infra.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]

WORK_MADE = ["kernel/artifacts/abc/bzImage", "kernel/state/ci.json", "distros/debian/rootfs/k1/filesystem.squashfs",
             "distros/debian/state/iso.json", "cache/debian/bookworm/apt/archives/libc6.deb",
             "sources/git-123.tar", "glibc/state.json", "digests.json", "lock", ".digests.json.99999999.x1y2.tmp",
             ".isobuild-work-dir"]
ISO_MADE = ["debian/isobuild-debian.iso", "debian/isobuild-debian.iso.sha256", "debian/isobuild-debian.iso.asc",
            "debian/isobuild-debian.manifest.json", "SHA256SUMS", "SHA256SUMS.asc", "report.html"]
LOGS_MADE = ["kernel-ci-20260101T000000Z.log", "isobuild.jsonl", "smoke-debian.json", "smoke-debian.xml"]


def touch(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


class Tree:
    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work

    @property
    def iso(self) -> Path:
        return self.root / "iso"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def settings(self, **values: str) -> None:
        (self.root / "isobuild.yaml").write_text(yaml.safe_dump({"work_dir": str(self.work), **values}))

    def run(self, *args: str) -> int:
        return cli.main(["-c", str(self.root / "isobuild.yaml"), *args])

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root.parent).as_posix() for p in self.root.parent.rglob("*") if p.is_file())


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    root = tmp_path / "project"
    (root / "patches" / "kernel").mkdir(parents=True)
    (root / "patches" / "kernel" / "series").write_text("0001-x.patch\n")
    t = Tree(root, tmp_path / "work")
    t.settings()
    touch(t.work, WORK_MADE)
    touch(t.iso, ISO_MADE)
    touch(t.logs, LOGS_MADE)
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    monkeypatch.chdir(root)
    yield t
    os.chdir(REPO)


def test_distclean_removes_everything_isobuild_made(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree.files()
    assert tree.run("distclean", "--dry-run") == 0
    out = capsys.readouterr().out
    assert tree.files() == before, "--dry-run removes nothing"
    assert f"would remove {tree.work / 'cache'}" in out and f"would remove {tree.iso / 'SHA256SUMS'}" in out
    assert tree.run("distclean") == 0
    assert not tree.work.exists() and not tree.iso.exists() and not tree.logs.exists()
    assert tree.files() == ["project/isobuild.yaml", "project/patches/kernel/series"]
    assert "removed 20 item(s)" in capsys.readouterr().out  # 9 entries in the work dir, 7 in iso/, 4 logs
    assert tree.run("distclean") == 0, "nothing left to remove is fine"


def test_what_isobuild_did_not_make_is_kept_and_listed(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    touch(tree.work, ["notes/mine.txt"])
    touch(tree.iso, ["README.txt", "debian/checksums.md5"])
    touch(tree.logs, ["todo.md"])
    assert tree.run("distclean") == 0
    out = capsys.readouterr().out
    for kept in (tree.work / "notes", tree.iso / "README.txt", tree.iso / "debian" / "checksums.md5",
                 tree.logs / "todo.md"):
        assert f"kept {kept}: not made by isobuild" in out
    assert tree.files() == sorted(["project/isobuild.yaml", "project/iso/README.txt", "project/logs/todo.md",
                                   "project/iso/debian/checksums.md5", "project/patches/kernel/series",
                                   "work/notes/mine.txt"])


def test_clean_keeps_caches_and_outputs_that_distclean_removes(tree: Tree) -> None:
    assert tree.run("clean") == 0
    assert (tree.work / "cache" / "debian").is_dir() and (tree.iso / "debian" / "isobuild-debian.iso").is_file()
    assert (tree.work / "sources" / "git-123.tar").is_file()
    assert tree.run("distclean") == 0
    assert not (tree.work / "cache").exists() and not tree.iso.exists()


def test_distclean_writes_no_log_of_its_own(tree: Tree) -> None:
    assert tree.run("distclean") == 0
    assert not tree.logs.exists(), "no logs/isobuild.jsonl is opened (it would be removed at once)"


@pytest.mark.parametrize(("setting", "value", "reason"), [
    # refused when the settings are loaded, for every verb
    ("work_dir", "/", "is the root directory"),
    ("work_dir", "/var/tmp", "is a shared top-level directory"),
    ("work_dir", "/etc/isobuild", "is inside a system directory tree"),
    ("work_dir", ".", "is the project directory itself"),
    ("work_dir", "..", "is a parent of the project directory"),
    ("work_dir", "patches", "is one of the project's input directories"),
    ("logs_dir", ".", "is the project directory itself"),
    ("logs_dir", "patches/kernel", "is one of the project's input directories"),
    # refused by distclean itself
    ("work_dir", "~", "it is a home directory|is a shared top-level directory"),  # /root: both
    ("work_dir", "repo", "it is a git repository"),
])
def test_refuses_a_dir_that_is_not_isobuilds(tree: Tree, setting: str, value: str, reason: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tree.root / "repo" / ".git").mkdir(parents=True)
    tree.settings(**{setting: value})
    before = tree.files()
    assert tree.run("distclean") == ExitCode.USER
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("isobuild: error:"))
    target = Path(os.path.expanduser(value)) if value.startswith(("/", "~")) else tree.root / value
    assert str(target.resolve()) in line and re.search(reason, line) and setting in line
    assert "hint: point " + setting in err
    assert tree.files() == before, "nothing is removed"


def test_refuses_a_work_dir_without_isobuilds_marker(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    (tree.work / ".isobuild-work-dir").unlink()
    touch(tree.work, ["somebody-elses/file"])
    before = tree.files()
    assert tree.run("distclean") == ExitCode.USER
    assert "carries no .isobuild-work-dir" in capsys.readouterr().err
    assert tree.files() == before


def test_refuses_while_another_run_holds_the_work_dir(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree.files()
    with lock.held(tree.work):
        assert tree.run("distclean") == ExitCode.INFRA
    assert "is in use by another isobuild run" in capsys.readouterr().err
    assert tree.files() == before


