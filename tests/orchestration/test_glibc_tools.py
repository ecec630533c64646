"""glibc: the parts that run real tools (moved from tests/unit/test_glibc.py, which
runs no process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.infra.errors import UserError
from builder.stages import glibc
from tests.unit.test_glibc import CHANGELOG, patch


def test_changelog_entry_gives_our_version_deterministically(tmp_path: Path) -> None:
    series = [patch(tmp_path, "0001-xsc.patch")]
    texts = []
    for n in range(2):
        f = tmp_path / f"changelog{n}"
        f.write_text(CHANGELOG)
        glibc.changelog_entry(f, "2.36-9+deb12u14+isobuild1", series)
        texts.append(f.read_text())
    assert texts[0] == texts[1], "same inputs, same changelog (and SOURCE_DATE_EPOCH)"
    head = texts[0].splitlines()
    assert head[0] == "glibc (2.36-9+deb12u14+isobuild1) bookworm; urgency=medium"
    assert "    - 0001-xsc.patch (sha256 abababababababab)" in head
    assert " -- isobuild <isobuild@localhost>  Sat, 18 Apr 2026 10:07:24 +0200" in head
    assert texts[0].endswith(CHANGELOG)
    # and dpkg agrees it is a valid changelog with that version
    f = tmp_path / "changelog0"
    import subprocess

    out = subprocess.run(["dpkg-parsechangelog", "-l", str(f), "-S", "Version"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "2.36-9+deb12u14+isobuild1"


@pytest.mark.parametrize(("ours", "theirs", "higher"), [
    ("2.36-9+deb12u14+isobuild1", "2.36-9+deb12u14", True),
    ("2.36-9+deb12u14~isobuild1", "2.36-9+deb12u14", False),
    ("2.36-9+deb12u14+isobuild1", "2.36-9+deb12u15", False),
    ("2.36-9+deb12u14+isobuild2", "2.36-9+deb12u14+isobuild1", True),
])
def test_versions_compare_the_way_dpkg_does(ours: str, theirs: str, higher: bool) -> None:
    assert glibc.version_gt(ours, theirs) is higher


def test_a_downgrade_is_refused_naming_both_versions() -> None:
    with pytest.raises(UserError, match=r"glibc 2.36-9\+deb12u14\+isobuild1 would downgrade libc6 in the root: "
                                        r"2.36-9\+deb12u15"):
        glibc.check_not_downgrade("2.36-9+deb12u14+isobuild1", "2.36-9+deb12u15", "libc6 in the root:", hint="x")


def test_unmet_build_dependencies_come_from_dpkg(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_text("Source: x\nBuild-Depends: dpkg, isobuild-no-such-package (>= 2) | isobuild-nor-this\n"
                       "Build-Depends-Indep: isobuild-indep-only\n\nPackage: x\nArchitecture: any\n"
                       "Description: x\n x\n")
    assert glibc.unmet_build_deps(control, ["nobiarch"]) == ["isobuild-no-such-package (>= 2) | isobuild-nor-this"]


def test_installing_ours_over_a_newer_libc6_from_the_mirror_is_refused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from builder import distros
    from tests.unit.test_debian import MIRROR, project

    plugin = distros.load(project(tmp_path, f"mirror: {MIRROR}\n"), "debian")
    rows = [{"package": "libc6", "version": "2.36-9+deb12u15", "arch": "amd64"},
            {"package": "libc-bin", "version": "2.36-9+deb12u15", "arch": "amd64"}]
    monkeypatch.setattr(plugin, "manifest", lambda root, log_path: rows)
    installed: list[list[Path]] = []
    monkeypatch.setattr(plugin, "install_packages", lambda root, debs, hold, log_path: installed.append(debs))
    meta = {"version": "2.36-9+deb12u14+isobuild1",
            "packages": [{"package": n, "file": f"{n}_1_amd64.deb"} for n in ("libc6", "libc-bin", "libc6-dev")]}
    with pytest.raises(UserError, match=r"glibc 2.36-9\+deb12u14\+isobuild1 would downgrade libc6 in the debian "
                                        r"root \(from its mirror\): 2.36-9\+deb12u15") as exc:
        plugin.install_glibc(tmp_path, tmp_path / "glibc", meta, tmp_path / "log")
    assert "apt-get install glibc-source" in str(exc.value.hint)
    assert installed == []
    rows[0]["version"] = rows[1]["version"] = "2.36-9+deb12u14"
    plugin.install_glibc(tmp_path, tmp_path / "glibc", meta, tmp_path / "log")
    assert installed == [[tmp_path / "glibc/debs/libc6_1_amd64.deb", tmp_path / "glibc/debs/libc-bin_1_amd64.deb"]]
