"""Unit tests for builder/tools/quilt.py: file names, series text, reading
quilt/GNU patch output, the verdict (fake outputs; real git where it is quick)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from builder.commands import patches
from builder.commands.patches import Hunk, PatchResult, Report
from builder.infra import log
from builder.infra.errors import UserError
from builder.tools import quilt

# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "expected"), [
    ("xsc: add the uapi header", "xsc-add-the-uapi-header"),
    ("add binary [x]: ..stuff..", "add-binary-x-.stuff"),
    ("[PATCH] fix it!", "PATCH-fix-it"),
    ("  leading and trailing  ", "leading-and-trailing"),
    ("version 1.2...3", "version-1.2.3"),
    ("under_score and dots.", "under_score-and-dots"),
    ("café: ünïcode", "caf-n-code"),
    ("---", ""),
])
def test_slug_follows_git(subject: str, expected: str) -> None:
    assert patches.slug(subject) == expected


def test_patch_filename_numbers_and_cuts_like_git() -> None:
    assert patches.patch_filename(1, "xsc: add the uapi header") == "0001-xsc-add-the-uapi-header.patch"
    assert patches.patch_filename(12345, "x") == "12345-x.patch"
    long = patches.patch_filename(7, "a very long subject " * 10)
    assert len(long) == 63 and long == "0007-a-very-long-subject-a-very-long-subject-a-very-long-.patch"


def test_title_is_the_first_non_blank_line() -> None:
    assert patches.title("\n\n  first line\nsecond line\n\nbody\n") == "first line"
    assert patches.title("one") == "one"


def test_series_text_has_comment_then_names() -> None:
    assert patches.series_text(["0001-a.patch", "0002-b.patch"], ["made here"]) == \
        "# made here\n0001-a.patch\n0002-b.patch\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin",
                               "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.org",
                               "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.org"}).stdout




# --- reading quilt output ----------------------------------------------------------------

PUSH = """Applying patch 0001-a.patch
patching file src/a.c
Hunk #1 succeeded at 13 (offset 3 lines).
Hunk #2 succeeded at 40 (offset -1 line).

Applying patch sub/0002-b.patch
patching file 'src/b c.c'
Hunk #1 succeeded at 27 with fuzz 1.
Hunk #2 succeeded at 50 with fuzz 2 (offset 4 lines).

Applying patch 0003-c.patch
patching file src/c.c
Hunk #1 FAILED at 30.
1 out of 1 hunk FAILED -- saving rejects to file src/c.c.rej
Applied patch 0003-c.patch (forced; needs refresh)
"""


def test_sections_hunks_and_classes() -> None:
    names = ["0001-a.patch", "sub/0002-b.patch", "0003-c.patch"]
    sections = patches.split_sections(PUSH, names)
    assert [n for n, _ in sections] == names
    first, second, third = (patches.hunks(lines) for _, lines in sections)
    assert first == [Hunk("src/a.c", 1, 13, offset=3), Hunk("src/a.c", 2, 40, offset=-1)]
    assert second == [Hunk("src/b c.c", 1, 27, fuzz=1), Hunk("src/b c.c", 2, 50, offset=4, fuzz=2)]
    assert [patches.classify(h, []) for h in (first, second, [])] == ["offset", "fuzz", "clean"]
    failures = quilt.parse_push_output("\n".join(sections[2][1]))
    assert [f.describe() for f in failures] == ["src/c.c hunk #1 (at line 30): hunk does not apply"]
    assert patches.classify(third, failures) == "fails"
    assert first[1].describe() == "src/a.c hunk #2 at 40 (offset -1 line)"
    assert second[1].describe() == "src/b c.c hunk #2 at 50 (offset +4 lines, fuzz 2)"


def test_a_missing_file_is_named_from_the_patch_header_gnu_patch_quotes() -> None:
    out = """Applying patch 0001-x.patch
patching file src/a.c
can't find file to patch at input line 5
Perhaps you used the wrong -p or --strip option?
The text leading up to this was:
--------------------------
|--- a/src/nope.c
|+++ b/src/nope.c
--------------------------
No file to patch.  Skipping patch.
"""
    assert [f.describe() for f in quilt.parse_push_output(out)] == ["a/src/nope.c: file to patch not found"]


def test_quilt_printing_the_patches_dir_still_maps_to_series_names() -> None:
    sections = patches.split_sections("Applying patch patches/0001-a.patch\npatching file x\n", ["0001-a.patch"])
    assert sections == [("0001-a.patch", ["patching file x"])]
    both = ["a.patch", "sub/a.patch"]
    assert [n for n, _ in patches.split_sections("Applying patch sub/a.patch\nApplying patch a.patch\n", both)] \
        == ["sub/a.patch", "a.patch"]


def test_worst_status_orders_clean_offset_fuzz_fails() -> None:
    assert patches.worst([]) == "clean"
    assert patches.worst(["offset", "clean"]) == "offset"
    assert patches.worst(["fuzz", "fails", "offset"]) == "fails"


# --- verdict and report ------------------------------------------------------------------


def report(*results: PatchResult, refreshed: list[str] | None = None) -> Report:
    return Report("kernel", "linux (x.tar)", Path("/p"), list(results), refreshed=refreshed)


def test_offset_is_a_warning_fuzz_and_fails_are_user_errors() -> None:
    events = io.StringIO()
    log.setup(json_console=True, stream=events)
    offset = PatchResult("0001-a.patch", "offset", [Hunk("a.c", 1, 13, offset=3)])
    patches.verdict([report(offset)])  # no exception: the build applies it
    warning = json.loads(events.getvalue().splitlines()[-1])
    assert warning["event"] == "patches.offset" and warning["patches"] == ["0001-a.patch"]
    assert warning["level"] == "warning" and "isobuild patches refresh" in warning["hint"]
    fuzz = PatchResult("0002-b.patch", "fuzz", [Hunk("b.c", 1, 27, fuzz=1)])
    with pytest.raises(UserError) as exc:
        patches.verdict([report(offset, fuzz)])
    assert exc.value.message == "kernel series: 0002-b.patch needs fuzz: b.c hunk #1 at 27 (fuzz 1)"
    assert exc.value.hint and "--accept-fuzz" in exc.value.hint
    fails = PatchResult("0003-c.patch", "fails", [],
                        [quilt.Failure("0003-c.patch", "c.c", 1, 30, "hunk does not apply")], after=None)
    later = PatchResult("0004-d.patch", "fails", [], [quilt.Failure("0004-d.patch", "d.c", 2, 9, "x")],
                        after="0003-c.patch")
    with pytest.raises(UserError) as exc:
        patches.verdict([report(offset, fuzz, fails, later)])
    assert exc.value.message == "kernel series: 0003-c.patch fails: c.c hunk #1 (at line 30): hunk does not apply"
    assert "kernel: 0004-d.patch: fails: d.c hunk #2 (at line 9): x; (checked on top of 0003-c.patch, which fails)" \
        in exc.value.details


def test_refreshed_patches_count_as_clean() -> None:
    fuzz = PatchResult("0002-b.patch", "fuzz", [Hunk("b.c", 1, 27, fuzz=1)])
    done = report(fuzz, refreshed=["0002-b.patch"])
    assert done.status == "clean"
    patches.verdict([done])
    assert report(fuzz).status == "fuzz"


def test_render_and_json() -> None:
    rep = report(PatchResult("0001-a.patch", "clean"),
                 PatchResult("0002-b.patch", "offset", [Hunk("a.c", 1, 13, offset=3)]), refreshed=["0002-b.patch"])
    rep.seconds = {"tree": 0.01, "apply": 0.2}
    text = patches.render(rep)
    assert text.splitlines() == [
        "kernel: 2 patch(es) from /p on linux (x.tar) (tree 0.0 s, apply 0.2 s)",
        "  clean   0001-a.patch",
        "  offset  0002-b.patch  a.c hunk #1 at 13 (offset +3 lines)",
        "  refreshed: 0002-b.patch"]
    data = json.loads(patches.to_json([rep]))
    assert data["status"] == "clean"
    assert data["components"][0]["patches"][1]["hunks"] == [
        {"file": "a.c", "hunk": 1, "line": 13, "offset": 3, "fuzz": 0}]


# --- writing a series --------------------------------------------------------------------


def test_replace_series_keeps_unlisted_files_and_drops_the_old_patches(tmp_path: Path) -> None:
    d = tmp_path / "patches"
    d.mkdir()
    (d / "old.patch").write_text("old")
    (d / "series").write_text("# c\nold.patch -p1\n")
    (d / "xsc.config").write_text("CONFIG_XSC=y\n")
    (d / "notes").mkdir()
    (d / "notes" / "README").write_text("kept")
    d.chmod(0o750)
    patches.replace_series(d, [("0001-new.patch", "new")], ["generated"])
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) == [
        "0001-new.patch", "notes", "notes/README", "series", "xsc.config"]
    assert (d / "series").read_text() == "# generated\n0001-new.patch\n"
    assert d.stat().st_mode & 0o777 == 0o750


def test_replace_series_failure_keeps_the_old_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "patches"
    d.mkdir()
    (d / "old.patch").write_text("old")
    (d / "series").write_text("old.patch\n")

    def boom(names: list[str], comment: list[str]) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(patches, "series_text", boom)
    with pytest.raises(Exception, match="disk full"):
        patches.replace_series(d, [("0001-new.patch", "new")], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patches"], "no temp dir left behind"
    assert sorted(p.name for p in d.iterdir()) == ["old.patch", "series"]
    assert (d / "series").read_text() == "old.patch\n"


def test_sparse_copy_takes_only_named_files(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f.c").write_text("f")
    (tree / "a" / "other.c").write_text("o")
    (tree / "a" / "link").symlink_to("b/f.c")
    patches.sparse_copy(tree, tmp_path / "out", {"a/b/f.c", "a/link", "a/new/file.c"})
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a", "a/b", "a/b/f.c", "a/link"]
    assert (out / "a" / "link").is_symlink()
    assert (out / "a" / "b" / "f.c").stat().st_ino != (tree / "a" / "b" / "f.c").stat().st_ino, "a copy, not a link"
