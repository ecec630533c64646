"""Unit tests of the glibc stage's pieces: series merging, versions, changelog,
build-dependency parsing, package selection, the boot check's glibc part,
and the stage runner behind ``all``/``isos``."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from builder import pipeline
from builder.infra import log
from builder.infra.config import GlibcSettings
from builder.infra.errors import CheckFailed, UserError
from builder.infra.schema import load
from builder.stages import glibc, rootfs, smoke
from builder.tools import quilt

CHANGELOG = """glibc (2.36-9+deb12u14) bookworm; urgency=medium

  * debian/patches/git-updates.diff: update from upstream stable branch.

 -- Aurelien Jarno <aurel32@debian.org>  Sat, 18 Apr 2026 10:07:23 +0200

glibc (2.36-9+deb12u13) bookworm; urgency=medium

  * older

 -- Aurelien Jarno <aurel32@debian.org>  Sat, 01 Mar 2026 10:00:00 +0100
"""


def patch(tmp_path: Path, name: str, strip: int = 1) -> quilt.Patch:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    return quilt.Patch(name, strip, path, "ab" * 32, 1)


def test_changelog_top_reads_the_newest_entry(tmp_path: Path) -> None:
    (tmp_path / "changelog").write_text(CHANGELOG)
    assert glibc.changelog_top(tmp_path / "changelog") == (
        "glibc", "2.36-9+deb12u14", "bookworm; urgency=medium", "Sat, 18 Apr 2026 10:07:23 +0200")


@pytest.mark.parametrize("text", ["", "not a changelog\n", "glibc (1.0-1) unstable; urgency=low\n\n  * no trailer\n"])
def test_a_broken_changelog_is_named(tmp_path: Path, text: str) -> None:
    (tmp_path / "changelog").write_text(text)
    with pytest.raises(UserError, match=r"changelog: the first entry is not a Debian changelog entry"):
        glibc.changelog_top(tmp_path / "changelog")


def test_a_missing_changelog_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"changelog: no debian/changelog"):
        glibc.changelog_top(tmp_path / "changelog")




def test_our_series_goes_after_debians(tmp_path: Path) -> None:
    debian_patches = tmp_path / "debian" / "patches"
    debian_patches.mkdir(parents=True)
    (debian_patches / "series").write_text("git-updates.diff\nlocal/a.diff")  # no final newline
    for name in ("git-updates.diff", "local/a.diff"):
        patch(debian_patches, name)
    ours = [patch(tmp_path / "ours", "0001-a.patch"), patch(tmp_path / "ours", "sub/0002-b.patch", strip=0)]
    glibc.append_series(debian_patches, ours)
    lines = (debian_patches / "series").read_text().splitlines()
    assert lines == ["git-updates.diff", "local/a.diff", "# isobuild: patches/glibc/series",
                     "isobuild/0001-a.patch", "isobuild/sub/0002-b.patch -p0"]
    assert (debian_patches / "isobuild" / "sub" / "0002-b.patch").is_file()
    # quilt's own reading of the merged series: Debian's then ours, in order
    assert [p.name for p in quilt.read_series(debian_patches)][-2:] == ["isobuild/0001-a.patch",
                                                                          "isobuild/sub/0002-b.patch"]






@pytest.mark.parametrize("suffix", ["isobuild1", "+iso build", "+" + "x" * 40, "+a'b"])
def test_bad_suffixes_are_refused_at_load(suffix: str) -> None:
    with pytest.raises(UserError, match=r"isobuild.yaml: glibc.suffix: must be"):
        load(GlibcSettings, {"suffix": suffix}, "isobuild.yaml", "glibc")


def test_unmet_build_dependencies_are_split_as_written() -> None:
    text = "gettext libselinux1-dev (>= 3.0) g++-12 | clang (<< 16) bison:native"
    assert glibc._DEP.findall(text) == ["gettext", "libselinux1-dev (>= 3.0)", "g++-12 | clang (<< 16)",
                                        "bison:native"]




def test_only_packages_the_root_has_are_installed(tmp_path: Path) -> None:
    meta = {"packages": [{"package": n, "file": f"{n}_1_amd64.deb"} for n in
                         ("libc6", "libc-bin", "libc6-dev", "libc-dev-bin", "nscd", "locales-all")]}
    picked = glibc.debs_for(meta, tmp_path, {"libc6", "libc-bin", "bash", "locales"})
    assert [p.name for p in picked] == ["libc6_1_amd64.deb", "libc-bin_1_amd64.deb"]
    assert all(p.parent == tmp_path / "debs" for p in picked)


def test_the_boot_check_reports_glibc_only_when_it_is_ours() -> None:
    plain = rootfs.smoke_script("/sys/kernel/xsc/version")
    assert "GLIBC" not in plain and "LIBC" not in plain
    script = rootfs.smoke_script("/sys/kernel/xsc/version", "XSC extensions:")
    assert "say \"GLIBC $(dpkg-query -W -f='${Version}' libc6" in script
    assert "grep -m1 -F -- 'XSC extensions:'" in script
    assert script.index("LIBC") < script.index("say DONE")


def test_the_boot_check_expects_our_glibc_version_and_marker() -> None:
    want = smoke.expect(r"\d+", "6.1.0-isobuild", {"version": "2.36-9+deb12u14+isobuild1",
                                                   "marker": "XSC extensions:"})
    assert re.fullmatch(want.markers["GLIBC"], "2.36-9+deb12u14+isobuild1")
    assert not re.fullmatch(want.markers["GLIBC"], "2.36-9+deb12u14")
    assert re.fullmatch(want.markers["LIBC"], "XSC extensions: xsc-glibc 1.0")
    assert not re.fullmatch(want.markers["LIBC"], "")
    assert "GLIBC" not in smoke.expect(r"\d+", "6.1.0", None).markers


@pytest.fixture
def quiet_log() -> None:
    log.setup(stream=io.StringIO())  # stage failures are logged; not to a stream an earlier test closed


def _stage(name: str, needs: list[str], calls: list[str], fail: bool = False) -> pipeline.Step:
    def run() -> str:
        calls.append(name)
        if fail:
            raise CheckFailed(f"{name} broke")
        return f"{name} ok"
    return pipeline.Step(name, needs, run)


@pytest.mark.usefixtures("quiet_log")
def test_keep_going_runs_what_does_not_depend_on_the_failure() -> None:
    calls: list[str] = []
    stages = [_stage("kernel", [], calls, fail=True), _stage("glibc", [], calls),
              _stage("debian-iso", ["kernel", "glibc"], calls), _stage("debian-smoke", ["debian-iso"], calls)]
    outcomes = pipeline.run_stages(stages, keep_going=True)
    assert calls == ["kernel", "glibc"]
    assert [(o.name, o.status) for o in outcomes] == [("kernel", "failed"), ("glibc", "ok"),
                                                      ("debian-iso", "skipped"), ("debian-smoke", "skipped")]
    assert outcomes[0].exit_code == 4 and outcomes[2].detail == "needs kernel"


def test_without_keep_going_the_first_failure_stops_the_run() -> None:
    calls: list[str] = []
    with pytest.raises(CheckFailed, match="kernel broke"):
        pipeline.run_stages([_stage("kernel", [], calls, fail=True), _stage("glibc", [], calls)], keep_going=False)
    assert calls == ["kernel"]


