"""Orchestration of the glibc-rpm stage (builder/stages/glibcrpm.py) on a tiny fake
"glibc" source RPM made here with the real rpmbuild: a spec named glibc
(Version 2.34, Release 3%{?dist}, %autosetup -p1, its own Patch1) over a C
program printing a banner our series changes.  Real rpm, rpmbuild and patch
do everything; only the EL buildroot (dnf --installroot from EL repositories,
unreachable here) is replaced by host rpmbuild of the same patched source RPM.
The type repo path downloads the source RPM with the real ``dnf download
--source`` from repositories made here with createrepo_c."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import distros, pipeline
from builder.commands import status
from builder.distros.el import ELPlugin
from builder.infra import log
from builder.infra.config import load_project
from builder.infra.errors import ExitCode, UserError
from builder.stages import glibcrpm
from builder.stages.base import Row
from tests.conftest import REPO, make_patch, record_path, records, sha256, write_series

BANNER = """#include <stdio.h>
int main(void) {
    puts("GNU C Library (fake) stable release version 2.34.");
    puts("Compiled by GNU CC.");
    puts("For bug reporting instructions, please see the fake.");
    return 0;
}
"""
# the distribution's own patch (its Patch1), then ours on top of it
DISTRO = BANNER.replace("Compiled by GNU CC.", "Compiled by GNU CC (EL build).")
OURS = DISTRO.replace('    puts("For bug reporting instructions, please see the fake.");\n',
                      '    puts("For bug reporting instructions, please see the fake.");\n'
                      '    puts("XSC extensions: fake 1");\n')
DISTRO_PATCH = make_patch("banner.c", BANNER, DISTRO)
XSC_PATCH = make_patch("banner.c", DISTRO, OURS, "Subject: XSC banner line\n\n")
# made against the upstream source, not the distribution's patched one: its context is gone
STALE_PATCH = make_patch("banner.c", BANNER, BANNER.replace("Compiled by GNU CC.", "Compiled by XSC CC."))

SPEC = """\
Name: glibc
Version: 2.34
Release: 3%{?dist}
Summary: fake glibc for isobuild's tests
License: LGPLv2+
AutoReqProv: no
Source0: glibc-2.34.tar.gz
Patch1: glibc-el-banner.patch
BuildRequires: gcc, make >= 4.0
%description
fake glibc
%package common
Summary: common files
%description common
common
%package minimal-langpack
Summary: minimal langpack
%description minimal-langpack
langpack
%package debuginfo
Summary: debug files (the stage leaves them out)
%description debuginfo
debug
%prep
%autosetup -n glibc-2.34 -p1
%build
gcc -o glibc-banner banner.c
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/glibc %{buildroot}/usr/lib/debug
install -m755 glibc-banner %{buildroot}/usr/bin/glibc-banner
echo common > %{buildroot}/usr/share/glibc/common
echo C > %{buildroot}/usr/share/glibc/langpack
echo debug > %{buildroot}/usr/lib/debug/glibc-banner.debug
%files
/usr/bin/glibc-banner
%files common
/usr/share/glibc/common
%files minimal-langpack
/usr/share/glibc/langpack
%files debuginfo
/usr/lib/debug/glibc-banner.debug
%changelog
* Mon Jan 15 2024 Someone <someone@example.com> - 2.34-3
- the distribution's build
"""


def rpmbuild(work: Path, *args: str) -> None:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_dbpath {work / 'rpmdb'}\n")
    subprocess.run(["rpmbuild", "--define", f"_topdir {work / 'top'}", *args], check=True, capture_output=True,
                   env=dict(os.environ, HOME=str(home)))


def make_srpm(work: Path, dist: str = ".el9", binaries: bool = False) -> Path:
    """The fake glibc source RPM (and with ``binaries`` its binary RPMs in top/RPMS)."""
    sources = work / "top" / "SOURCES"
    sources.mkdir(parents=True)
    tree = work / "glibc-2.34"
    tree.mkdir()
    (tree / "banner.c").write_text(BANNER)
    with tarfile.open(sources / "glibc-2.34.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="glibc-2.34")
    (sources / "glibc-el-banner.patch").write_text(DISTRO_PATCH)
    spec = work / "glibc.spec"
    spec.write_text(SPEC)
    rpmbuild(work, "--define", f"dist {dist}", "-bs", str(spec))
    if binaries:
        rpmbuild(work, "--define", f"dist {dist}", "--nodeps", "-bb", str(spec))
    (srpm,) = (work / "top" / "SRPMS").glob("*.src.rpm")
    return srpm


def host_rebuild(calls: list[Path]) -> object:
    """Stands in for glibcrpm.rebuild_in: host rpmbuild of the same patched source RPM."""

    def rebuild_in(p: glibcrpm.Plan, srpm: Path, result: Path, log_path: Path) -> None:
        calls.append(srpm)
        work = p.tree / "host-rebuild"
        rpmbuild(work, "--define", f"dist {p.dist}", "--nodeps", "--rebuild", str(srpm))
        result.mkdir(parents=True, exist_ok=True)
        for rpm in (work / "top" / "RPMS").glob("*/*.rpm"):
            shutil.copyfile(rpm, result / rpm.name)

    return rebuild_in


@dataclass
class ElProject:
    root: Path
    work: Path
    srpm: Path

    @property
    def current(self) -> Path:
        """The link to this project's last good glibc RPMs."""
        return records(self.root, self.work) / "current" / "glibc-rpm-alma-x86_64"

    @property
    def record_path(self) -> Path:
        return record_path(self.root, self.work, "glibc-rpm-alma-x86_64")
    rebuilds: list[Path]

    def edit(self, **glibc: object) -> None:
        path = self.root / "distros/alma.yaml"
        data = yaml.safe_load(path.read_text())
        data["glibc"].update(glibc)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def set_series(self, patches: dict[str, str]) -> None:
        write_series(self.root / "patches" / "glibc", patches)

    def plugin(self) -> ELPlugin:
        plugin = distros.load(load_project(self.root / "isobuild.yaml"), "alma")
        assert isinstance(plugin, ELPlugin)
        return plugin

    def ensure(self, force: bool = False) -> tuple[glibcrpm.Plan, dict[str, Any], bool]:
        done = pipeline.ensure_glibc_rpm(glibcrpm.GlibcRpmStage(self.plugin()), force)
        return done.stage.plan, done.meta, done.built_now

    def row(self) -> list[Row]:
        """The glibc-rpm row status shows for alma (none when it takes the distribution's glibc)."""
        project = self.plugin().project
        return [r for r in status.rows(project) if r.stage == "glibc-rpm" and r.name == "alma"]

    @property
    def stage(self) -> Path:
        return self.work / "distros" / "alma" / "glibc-rpm"


@pytest.fixture
def el_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ElProject]:
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    srpm = make_srpm(tmp_path / "distro")
    root = tmp_path / "project"
    for sub in ("distros", "kickstart", "patches/glibc"):
        (root / sub).mkdir(parents=True)
    shutil.copy(REPO / "kickstart/el-live.ks.j2", root / "kickstart")
    work = tmp_path / "work"
    (root / "isobuild.yaml").write_text(yaml.safe_dump({"work_dir": str(work)}))
    alma = yaml.safe_load((REPO / "distros/alma.yaml").read_text())
    alma.update(build="dnf", repositories=[{"name": "el-test", "baseurl": "file:///nonexistent", "gpgcheck": False}])
    alma["glibc"].update(srpm={"type": "file", "path": str(srpm), "sha256": sha256(srpm)}, source_repositories=[])
    (root / "distros/alma.yaml").write_text(yaml.safe_dump(alma, sort_keys=False))
    project = ElProject(root, work, srpm, [])
    project.set_series({"0001-csu-xsc-banner.patch": XSC_PATCH})
    monkeypatch.setattr(glibcrpm, "rebuild_in", host_rebuild(project.rebuilds))
    monkeypatch.chdir(root)
    log.setup()
    yield project
    os.chdir(REPO)


def run_banner(rpm: Path, scratch: Path) -> str:
    """Install the RPM into a scratch root with the real rpm, as it lands in the image, and run it."""
    subprocess.run(["rpm", f"--root={scratch}", "--dbpath=/var/lib/rpm", "-i", "--nodeps", "--noscripts", str(rpm)],
                   check=True, capture_output=True)
    return subprocess.run([str(scratch / "usr/bin/glibc-banner")], check=True, capture_output=True, text=True).stdout


def test_rebuilds_the_distributions_glibc_with_our_series(el_project: ElProject, tmp_path: Path) -> None:
    p, meta, fresh = el_project.ensure()
    assert fresh and len(el_project.rebuilds) == 1
    current = el_project.current.resolve()
    assert current == p.artifact and current.parent == el_project.stage / "artifacts"
    rpms = sorted(r.name for r in (current / "rpms").iterdir())
    # the distribution's packages with its version + our suffix; no debuginfo
    assert rpms == ["glibc-2.34-3.el9.isobuild1.x86_64.rpm", "glibc-common-2.34-3.el9.isobuild1.x86_64.rpm",
                    "glibc-minimal-langpack-2.34-3.el9.isobuild1.x86_64.rpm"]
    out = run_banner(current / "rpms" / rpms[0], tmp_path / "scratch")
    assert out.splitlines() == ["GNU C Library (fake) stable release version 2.34.",  "Compiled by GNU CC (EL build).",
                                "For bug reporting instructions, please see the fake.", "XSC extensions: fake 1"]
    on_disk = json.loads((current / "metadata.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert meta["version"] == "2.34-3.el9.isobuild1" and meta["distro_version"] == "2.34-3.el9"
    assert meta["key"] == p.key and meta["build"] == "dnf" and meta["dist"] == ".el9"
    assert meta["srpm"] == {"file": "glibc-2.34-3.el9.src.rpm", "sha256": sha256(el_project.srpm),
                            "patched": "glibc-2.34-3.el9.isobuild1.src.rpm"}
    assert meta["patches"] == [{"name": "0001-csu-xsc-banner.patch", "strip": 1,
                                "sha256": sha256(el_project.root / "patches/glibc/0001-csu-xsc-banner.patch")}]
    assert [(r["package"], r["version"], r["arch"]) for r in meta["rpms"]] == [
        ("glibc", "2.34-3.el9.isobuild1", "x86_64"), ("glibc-common", "2.34-3.el9.isobuild1", "x86_64"),
        ("glibc-minimal-langpack", "2.34-3.el9.isobuild1", "x86_64")]
    assert isinstance(meta["seconds"], float) and set(meta["durations"]) == {"prepare", "rebuild"}
    # the patched source RPM's spec: our tag above the distribution's, the suffix, the changelog entry
    spec = subprocess.run(["rpm", f"--dbpath={tmp_path / 'db'}", "-qp", "--qf", "%{CHANGELOGNAME}\n%{CHANGELOGTEXT}",
                           str(current / "srpm" / meta["srpm"]["patched"])],
                          capture_output=True, text=True, check=True).stdout
    assert spec.splitlines() == ["isobuild <isobuild@localhost>",
                                 f"- isobuild: patches/glibc/series: 0001-csu-xsc-banner.patch (sha256 "
                                 f"{meta['patches'][0]['sha256'][:16]})"]
    record = json.loads(el_project.record_path.read_text())
    assert record["status"] == "ok" and record["last_good"] == p.key
    assert not (el_project.stage / "trees").exists() or not list((el_project.stage / "trees").iterdir())

    # unchanged inputs: nothing is rebuilt
    p2, meta2, fresh2 = el_project.ensure()
    assert not fresh2 and p2.key == p.key and meta2 == meta and len(el_project.rebuilds) == 1


def test_a_patch_that_does_not_apply_fails_before_the_rebuild_and_keeps_the_last_good(
        el_project: ElProject) -> None:
    p, _, _ = el_project.ensure()
    good = el_project.current.resolve()
    el_project.set_series({"0001-csu-xsc-banner.patch": XSC_PATCH, "0002-stale.patch": STALE_PATCH})
    host_tmp = set(Path("/var/tmp").iterdir())
    with pytest.raises(UserError) as exc:
        el_project.ensure()
    # rpmbuild leaves a failed %prep's script in its %_tmppath: ours, never the host's /var/tmp
    assert {x for x in Path("/var/tmp").iterdir() if x.name.startswith("rpm-tmp.")} - host_tmp == set()
    assert exc.value.exit_code == ExitCode.USER
    assert exc.value.message.startswith("patch 0002-stale.patch does not apply at fuzz 0 to alma's glibc "
                                        "(glibc-2.34-3.el9.src.rpm after its own patches): banner.c hunk #1")
    assert len(el_project.rebuilds) == 1, "the rebuild never started"
    assert el_project.current.resolve() == good and (good / "metadata.json").is_file()
    record = json.loads(el_project.record_path.read_text())
    assert record["status"] == "failed" and record["last_good"] == p.key
    assert "0002-stale.patch" in record["error"]


def test_status_row_is_built_then_stale_naming_the_changed_series(el_project: ElProject) -> None:
    (row,) = el_project.row()
    assert (row.stage, row.name, row.state) == ("glibc-rpm", "alma", "missing")
    p, _, _ = el_project.ensure()
    (row,) = el_project.row()
    assert (row.state, row.key) == ("built", p.key[:12])
    assert row.detail.startswith("2.34-3.el9.isobuild1, 3 packages in ")
    el_project.set_series({"0001-csu-xsc-banner.patch": XSC_PATCH + "\n"})
    (row,) = el_project.row()
    assert row.state == "stale" and row.detail == "patches: 0001-csu-xsc-banner.patch changed"
    el_project.edit(enabled=False)  # the distribution's glibc stays: no stage, no row
    assert el_project.row() == []


def test_a_release_suffix_that_sorts_lower_is_refused_naming_the_setting(el_project: ElProject) -> None:
    el_project.edit(release_suffix="~isobuild1")
    with pytest.raises(UserError) as exc:
        el_project.ensure()
    assert exc.value.exit_code == ExitCode.USER
    assert exc.value.message == ("distros/alma.yaml: glibc.release_suffix '~isobuild1' makes glibc "
                                 "2.34-3.el9~isobuild1, which does not sort above the distribution's 2.34-3.el9")
    assert el_project.rebuilds == []


def test_the_source_rpm_from_repositories_with_dnf_download(el_project: ElProject, tmp_path: Path) -> None:
    """type repo: the real 'dnf download --source glibc' (dnf-plugins-core) from a binary repository
    (which glibc the distribution installs) and a source repository, both made here."""
    distro = tmp_path / "repo-distro"
    make_srpm(distro, binaries=True)
    binary, source = tmp_path / "repos/binary", tmp_path / "repos/source"
    binary.mkdir(parents=True)
    source.mkdir(parents=True)
    for rpm in (distro / "top/RPMS").glob("*/*.rpm"):
        shutil.copy(rpm, binary)
    for rpm in (distro / "top/SRPMS").glob("*.src.rpm"):
        shutil.copy(rpm, source)
    for repo in (binary, source):
        subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    path = el_project.root / "distros/alma.yaml"
    data = yaml.safe_load(path.read_text())
    data["repositories"] = [{"name": "el-test", "baseurl": f"file://{binary}", "gpgcheck": False}]
    data["glibc"].update(srpm={"type": "repo"},
                         source_repositories=[{"name": "el-test-source", "baseurl": f"file://{source}",
                                               "gpgcheck": False}])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plugin = el_project.plugin()
    with pytest.raises(Exception, match="not downloaded yet"):
        glibcrpm.plan(plugin)  # planning (status) never downloads
    p, meta, fresh = el_project.ensure()
    assert fresh and p.srpm.path.parent == glibcrpm.srpm_cache(plugin)
    assert p.srpm.path.name == "glibc-2.34-3.el9.src.rpm" and meta["version"] == "2.34-3.el9.isobuild1"
    assert not (el_project.stage / "download").exists()
    _, _, again = el_project.ensure()
    assert not again and len(el_project.rebuilds) == 1


def test_clean_drops_superseded_glibc_rpms_and_failed_trees_keeps_current(el_project: ElProject) -> None:
    from builder.commands import clean

    first, _, _ = el_project.ensure()
    el_project.set_series({"0001-csu-xsc-banner.patch": XSC_PATCH + "\n"})
    second, _, fresh = el_project.ensure()
    assert fresh and second.key != first.key
    failed_tree = el_project.stage / "trees" / "0123456789abcdef"  # what a failed build leaves
    failed_tree.mkdir(parents=True)
    removed = [path for path, _ in clean.clean(el_project.work)]
    assert first.artifact in removed and failed_tree in removed
    assert not first.artifact.exists() and not failed_tree.exists()
    assert second.artifact.is_dir() and el_project.current.resolve() == second.artifact
