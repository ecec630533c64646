"""``isobuild patches`` end to end on a tiny source tree: a real git repository
made here (gitpython), real git format-patch, real quilt and GNU patch, the
real CLI.  generate -> check (clean, offset, fuzz, fails made by editing the
source) -> refresh -> check clean; and every refusal of generate."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git
import pytest
import yaml

from builder import cli
from builder.infra.errors import ExitCode
from builder.tools import quilt

REPO = Path(__file__).resolve().parents[2]
LINES = [f"line {n}" for n in range(1, 61)]


def text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def edited(lines: list[str], number: int, new: str) -> list[str]:
    """``lines`` with line ``number`` (1-based) replaced."""
    out = list(lines)
    out[number - 1] = new
    return out


@dataclass
class Tiny:
    root: Path  # the isobuild project
    work: Path
    repo: git.Repo  # the branch the series comes from; tag "base" is the pristine source

    @property
    def patches(self) -> Path:
        return self.root / "patches" / "kernel"

    def source(self, files: dict[str, str]) -> None:
        """Make the source tarball the kernel source (pinned by sha256)."""
        tarball = self.root.parent / "src.tar.gz"
        tree = self.root.parent / "src-tree"
        for name, body in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text(body)
        with tarfile.open(tarball, "w:gz") as tar:
            tar.add(tree, arcname="linux-tiny")
        settings = yaml.safe_load((self.root / "isobuild.yaml").read_text())
        settings["kernel"]["source"] = {"type": "tarball", "path": str(tarball),
                                        "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()}
        (self.root / "isobuild.yaml").write_text(yaml.safe_dump(settings))

    def commit(self, files: dict[str, str], message: str) -> git.Commit:
        for name, body in files.items():
            path = Path(str(self.repo.working_tree_dir)) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        self.repo.index.add(list(files))
        return self.repo.index.commit(message)

    def run(self, *args: str) -> int:
        return cli.main(["-c", str(self.root / "isobuild.yaml"), *args])

    def check(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
        capsys.readouterr()
        code = self.run("patches", *args, "--component", "kernel", "--json")
        out, err = capsys.readouterr()
        return code, json.loads(out)["components"][0], err


PRISTINE = {"Makefile": "all:\n", "src/a.c": text(LINES), "src/b.c": text(LINES), "src/c.c": text(LINES)}


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tiny]:
    root = tmp_path / "project"
    (root / "patches" / "kernel").mkdir(parents=True)
    (root / "patches" / "kernel" / "xsc.config").write_text("CONFIG_XSC=y\n")
    work = tmp_path / "work"
    (root / "isobuild.yaml").write_text(yaml.safe_dump({"work_dir": str(work), "kernel": {},
                                                        "glibc": {"enabled": False}}))
    repo = git.Repo.init(tmp_path / "branch")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Patch Author")
        cfg.set_value("user", "email", "author@example.org")
    t = Tiny(root, work, repo)
    t.source(PRISTINE)
    t.commit(PRISTINE, "the pristine source")
    repo.create_tag("base")
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    monkeypatch.chdir(root)
    yield t
    os.chdir(REPO)


def first_error_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("isobuild: error:"))


def three_patches(t: Tiny) -> None:
    """Three commits, one per file, each changing line 30."""
    for name in ("a", "b", "c"):
        t.commit({f"src/{name}.c": text(edited(LINES, 30, f"line 30 of {name}, patched"))},
                 f"{name}: patch line 30\n\nWhy {name} needs it.\n\nSigned-off-by: Patch Author <author@example.org>")


def test_generate_check_refresh_cycle(tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    three_patches(tiny)
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir),
                    "--base", "base", "--head", "HEAD") == 0
    names = ["0001-a-patch-line-30.patch", "0002-b-patch-line-30.patch", "0003-c-patch-line-30.patch"]
    listed = [ln for ln in (tiny.patches / "series").read_text().splitlines() if not ln.startswith("#")]
    assert listed == names
    assert (tiny.patches / "xsc.config").read_text() == "CONFIG_XSC=y\n", "files the series did not list are kept"
    first = (tiny.patches / names[0]).read_text()
    head = tiny.repo.commit("HEAD~2").hexsha
    assert first.startswith(f"From {head} Mon Sep 17 00:00:00 2001\nFrom: Patch Author <author@example.org>\n")
    assert "\nSubject: [PATCH 1/3] a: patch line 30\n\nWhy a needs it.\n\nSigned-off-by:" in first
    assert "\n--- a/src/a.c\n+++ b/src/a.c\n@@ -27,7 +27,7 @@" in first

    code, rep, _ = tiny.check(capsys, "check")
    assert code == 0 and [(p["name"], p["status"]) for p in rep["patches"]] == [(n, "clean") for n in names]
    pristine_json = next((tiny.work / "patches" / "pristine").glob("kernel-*/pristine.json"))
    made = pristine_json.stat().st_mtime_ns
    code, rep, _ = tiny.check(capsys, "check")
    assert code == 0 and pristine_json.stat().st_mtime_ns == made, "the pristine tree is extracted once"

    # The source moves on: 3 lines more at the top of a.c (offset), the first context
    # line of b.c's hunk changed (fuzz), the patched line of c.c changed (fails).
    tiny.source({"src/a.c": text(["new 1", "new 2", "new 3", *LINES]),
                 "src/b.c": text(edited(LINES, 27, "line 27, changed upstream")),
                 "src/c.c": text(edited(LINES, 30, "line 30, changed upstream"))})
    code, rep, err = tiny.check(capsys, "check")
    assert code == ExitCode.USER
    assert [p["status"] for p in rep["patches"]] == ["offset", "fuzz", "fails"]
    assert rep["patches"][0]["hunks"] == [{"file": "src/a.c", "hunk": 1, "line": 30, "offset": 3, "fuzz": 0}]
    assert rep["patches"][1]["hunks"] == [{"file": "src/b.c", "hunk": 1, "line": 27, "offset": 0, "fuzz": 1}]
    assert rep["patches"][2]["failures"] == [{"patch": names[2], "file": "src/c.c", "hunk": 1, "line": 27,
                                             "reason": "hunk does not apply"}]
    assert f"kernel series: {names[2]} fails: src/c.c hunk #1 (at line 27): hunk does not apply" in err

    # refresh: the offset patch only (fuzz needs --accept-fuzz; fails is never touched)
    before = {n: (tiny.patches / n).read_bytes() for n in names}
    code, rep, _ = tiny.check(capsys, "refresh")
    assert code == ExitCode.USER, "fuzz and fails remain"
    assert rep["refreshed"] == [names[0]]
    assert rep["not_refreshed"] == {
        names[1]: "applies only with fuzz (refresh with --accept-fuzz after reviewing it)",
        names[2]: "fails: src/c.c hunk #1 (at line 27): hunk does not apply"}
    assert (tiny.patches / names[1]).read_bytes() == before[names[1]]
    assert (tiny.patches / names[2]).read_bytes() == before[names[2]]
    refreshed = (tiny.patches / names[0]).read_text()
    assert refreshed.startswith(first[:first.index("\ndiff --git")]), "the commit message header is kept"
    assert "\n--- a/src/a.c\n+++ b/src/a.c\n@@ -30,7 +30,7 @@" in refreshed

    code, rep, _ = tiny.check(capsys, "refresh", "--accept-fuzz")
    assert code == ExitCode.USER and rep["refreshed"] == [names[1]]
    assert list(rep["not_refreshed"]) == [names[2]] and rep["not_refreshed"][names[2]].startswith("fails: src/c.c")
    assert " line 27, changed upstream\n" in (tiny.patches / names[1]).read_text()

    code, rep, _ = tiny.check(capsys, "check")
    assert [p["status"] for p in rep["patches"]] == ["clean", "clean", "fails"] and code == ExitCode.USER

    # upstream takes c.c back: the whole series applies exactly
    tiny.source({"src/c.c": text(LINES)})
    code, rep, _ = tiny.check(capsys, "check")
    assert code == 0 and rep["status"] == "clean"


def test_offset_alone_passes_with_a_warning_and_the_cache_stays_pristine(
        tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    three_patches(tiny)
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir),
                    "--base", "base", "--head", "HEAD") == 0
    tiny.source({"src/b.c": text(LINES[:5] + LINES[7:])})  # two lines fewer above the hunk
    capsys.readouterr()
    assert tiny.run("patches", "check") == 0
    out, err = capsys.readouterr()
    assert "  offset  0002-b-patch-line-30.patch  src/b.c hunk #1 at 25 (offset -2 lines)" in out
    assert "patches.offset" in err and "isobuild patches refresh" in err
    cache = next((tiny.work / "patches" / "pristine").glob("kernel-*/tree"))
    digest = {p.relative_to(cache).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in cache.rglob("*") if p.is_file()}
    assert tiny.run("patches", "refresh") == 0
    assert "refreshed: 0002-b-patch-line-30.patch" in capsys.readouterr().out
    assert digest == {p.relative_to(cache).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in cache.rglob("*") if p.is_file()}, "refresh never writes to the cached tree"
    assert not list((tiny.work / "patches" / "scratch").iterdir()), "scratch trees are removed"
    code, rep, _ = tiny.check(capsys, "check")
    assert code == 0 and {p["status"] for p in rep["patches"]} == {"clean"}


def test_refresh_leaves_a_patch_whose_git_mode_change_quilt_would_drop(
        tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    script = Path(str(tiny.repo.working_tree_dir)) / "src" / "a.c"
    script.write_text(text(edited(LINES, 30, "now a script")))
    script.chmod(0o755)
    tiny.repo.index.add(["src/a.c"])
    tiny.repo.index.commit("a: make it executable")
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir),
                    "--base", "base", "--head", "HEAD") == 0
    patch = tiny.patches / "0001-a-make-it-executable.patch"
    assert "\nold mode 100644\nnew mode 100755\n" in patch.read_text()
    tiny.source({"src/a.c": text(["new 1", *LINES])})
    before = patch.read_bytes()
    code, rep, _ = tiny.check(capsys, "refresh")
    assert code == 0 and rep["patches"][0]["status"] == "offset" and rep["refreshed"] == []
    assert rep["not_refreshed"]["0001-a-make-it-executable.patch"].startswith("has git mode/rename/binary headers")
    assert patch.read_bytes() == before


def test_a_patch_quilt_cannot_apply_at_all_is_left_out_and_the_rest_still_checked(
        tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny.patches / "0001-missing.patch").write_text(
        "Subject: touches a file the source lacks\n\n--- a/src/nope.c\n+++ b/src/nope.c\n@@ -1 +1 @@\n-a\n+b\n")
    (tiny.patches / "0002-new-file.patch").write_text(
        "Subject: adds a file\n\n--- /dev/null\n+++ b/src/new/d.c\n@@ -0,0 +1 @@\n+d\n")
    (tiny.patches / "0003-moved.patch").write_text(  # written for line 12, applies at line 10
        "Subject: an offset after the failure\n\n--- a/src/a.c\n+++ b/src/a.c\n@@ -12,3 +12,3 @@\n"
        " line 9\n-line 10\n+ten\n line 11\n")
    (tiny.patches / "series").write_text("0001-missing.patch\n0002-new-file.patch\n0003-moved.patch\n")
    code, rep, err = tiny.check(capsys, "check")
    assert code == ExitCode.USER
    assert [(p["status"], p["after"]) for p in rep["patches"]] == [
        ("fails", None), ("clean", "0001-missing.patch"), ("offset", "0001-missing.patch")]
    assert rep["patches"][0]["failures"][0]["reason"] == "file to patch not found"
    assert "0001-missing.patch fails" in err
    moved = (tiny.patches / "0003-moved.patch").read_bytes()
    code, rep, _ = tiny.check(capsys, "refresh")
    assert code == ExitCode.USER and rep["refreshed"] == []
    assert rep["not_refreshed"] == {
        "0001-missing.patch": "fails: a/src/nope.c: file to patch not found",
        "0003-moved.patch": "comes after 0001-missing.patch, which does not apply exactly"}
    assert (tiny.patches / "0003-moved.patch").read_bytes() == moved


def test_generate_refuses_merge_commits(tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny.repo.head.commit
    tiny.commit({"src/a.c": text(edited(LINES, 5, "side"))}, "side: change a")
    side = tiny.repo.head.commit
    tiny.repo.head.reset(base, index=True, working_tree=True)
    tiny.commit({"src/b.c": text(edited(LINES, 5, "main"))}, "main: change b")
    merge = tiny.repo.index.commit("Merge the side branch", parent_commits=[tiny.repo.head.commit, side])
    (tiny.patches / "series").write_text("old.patch\n")
    (tiny.patches / "old.patch").write_text("old\n")
    capsys.readouterr()
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir),
                    "--base", "base", "--head", "HEAD") == ExitCode.USER
    err = capsys.readouterr().err
    first = first_error_line(err)
    assert f"contains merge commit {merge.hexsha[:12]} ('Merge the side branch')" in first
    assert "hint: linearize the branch first, e.g. git rebase base" in err
    assert (tiny.patches / "series").read_text() == "old.patch\n", "the old series is untouched"


@pytest.mark.parametrize(("args", "message"), [
    (["--base", "base", "--head", "base"], "no commits between --base base and --head base"),
    (["--base", "base", "--head", "no-such-branch"], "--head 'no-such-branch' is not a commit in this repository"),
    (["--base", "v0.0", "--head", "HEAD"], "--base 'v0.0' is not a commit in this repository"),
    (["--base", "HEAD", "--head", "base"], "--base HEAD ("),
])
def test_generate_refuses_bad_ranges(tiny: Tiny, capsys: pytest.CaptureFixture[str], args: list[str],
                                     message: str) -> None:
    three_patches(tiny)
    capsys.readouterr()
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir), *args) == ExitCode.USER
    first = first_error_line(capsys.readouterr().err)
    assert first.startswith(f"isobuild: error: {tiny.repo.working_tree_dir}: ") and message in first
    assert not (tiny.patches / "series").exists()


def test_generate_refuses_a_non_repository(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert tiny.run("patches", "generate", "--repo", str(plain), "--base", "a", "--head", "b") == ExitCode.USER
    assert first_error_line(capsys.readouterr().err) == f"isobuild: error: {plain}: not a git repository"
    assert tiny.run("patches", "generate", "--repo", str(tmp_path / "gone"), "--base", "a",
                    "--head", "b") == ExitCode.USER
    assert first_error_line(capsys.readouterr().err) == f"isobuild: error: {tmp_path / 'gone'}: --repo not found"


def test_generate_refuses_empty_and_binary_commits(tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tiny.repo.index.commit("nothing at all")
    capsys.readouterr()
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir),
                    "--base", "base", "--head", "HEAD") == ExitCode.USER
    assert f"commit {empty.hexsha[:12]} ('nothing at all') changes nothing" in capsys.readouterr().err
    (Path(str(tiny.repo.working_tree_dir)) / "logo.bin").write_bytes(b"\x00\x01\x02")
    tiny.repo.index.add(["logo.bin"])
    binary = tiny.repo.index.commit("add a logo")
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir),
                    "--base", f"{empty.hexsha}", "--head", "HEAD") == ExitCode.USER
    assert f"commit {binary.hexsha[:12]} ('add a logo') changes binary file logo.bin" in capsys.readouterr().err


def test_generated_patches_ignore_the_users_git_config(tiny: Tiny, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[diff]\n\tnoprefix = true\n[format]\n\tsignature = my sig\n")
    monkeypatch.setenv("HOME", str(home))
    three_patches(tiny)
    out = tiny.root / "patches" / "series-out"  # --out is a directory in the project
    assert tiny.run("patches", "generate", "--repo", str(tiny.repo.working_tree_dir), "--base", "base",
                    "--head", "HEAD~2", "--out", str(out)) == 0
    body = (out / "0001-a-patch-line-30.patch").read_text()
    assert "\n--- a/src/a.c\n+++ b/src/a.c\n" in body and "my sig" not in body
    assert not (tiny.patches / "series").exists(), "--out, not the configured directory"


def test_glibc_is_checked_on_its_own_pristine_tree(tiny: Tiny, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from builder.stages import glibc as glibc_stage

    # ``all`` is the kernel alone while the project does not build glibc
    capsys.readouterr()
    assert tiny.run("patches", "check") == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == ["kernel"]
    settings = yaml.safe_load((tiny.root / "isobuild.yaml").read_text())
    settings["glibc"] = {"enabled": True}
    (tiny.root / "isobuild.yaml").write_text(yaml.safe_dump(settings))

    # builder/stages/glibc.py's pristine_tree (Debian's patched tree; the real one is in the real tier)
    def pristine_tree(project: object) -> quilt.Pristine:
        def unpack(dest: Path, log_path: Path) -> None:
            (dest / "libc").mkdir(parents=True)
            (dest / "libc" / "x.c").write_text(text(LINES))
        return quilt.Pristine({"kind": "test", "sha256": "0" * 64}, "test glibc", unpack)

    monkeypatch.setattr(glibc_stage, "pristine_tree", pristine_tree)
    glibc = tiny.root / "patches" / "glibc"
    glibc.mkdir()
    (glibc / "g.patch").write_text("--- a/libc/x.c\n+++ b/libc/x.c\n@@ -5,3 +5,3 @@\n line 2\n-line 3\n+three\n"
                                   " line 4\n")
    (glibc / "series").write_text("g.patch\n")
    assert tiny.run("patches", "check", "--json") == 0, "an offset is a warning"
    data = json.loads(capsys.readouterr().out)
    assert [(c["component"], c["status"]) for c in data["components"]] == [("kernel", "clean"), ("glibc", "offset")]
    assert data["components"][1]["source"] == "test glibc"
