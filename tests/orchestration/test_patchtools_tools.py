"""patchtools: the parts that run real tools (moved from tests/unit/test_patchtools.py, which
runs no process)."""

from __future__ import annotations

from pathlib import Path

from builder.commands import patches
from tests.unit.test_patchtools import git


def test_names_match_real_git_format_patch(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    subjects = ["xsc: add [the] header", "fix...dots.", "über: non-ascii", "two line\nsubject\n\nand body",
                "a very long subject that git cuts at its filename limit, see", "-- odd --"]
    for n, subject in enumerate(subjects):
        (repo / "f").write_text(f"{n}\n")
        git(repo, "add", "f")
        git(repo, "commit", "-q", "-m", subject)
    git(repo, "format-patch", "-q", "--root", "-o", str(tmp_path / "out"), "HEAD")
    theirs = sorted(p.name for p in (tmp_path / "out").iterdir())
    ours = [patches.patch_filename(n, patches.title(s)) for n, s in enumerate(subjects, 1)]
    assert ours == theirs
