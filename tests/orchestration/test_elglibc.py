"""The glibc-rpm stage's parts (builder/stages/glibcrpm.py): spec editing on EL9-style
glibc specs, rpm's version order (the real rpm), the source RPM pin and
download's bad inputs, the mock and dnf-buildroot commands, the stage key."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import distros
from builder.distros.el import ELPlugin
from builder.infra import log, runner
from builder.infra.config import load_project
from builder.infra.errors import ExitCode, InfraError, UserError
from builder.stages import glibcrpm
from builder.tools import dnf, quilt
from tests.conftest import REPO, make_patch, sha256
from tests.orchestration.test_elglibc_fake import DISTRO, OURS, make_srpm

# The shape of EL9's glibc.spec (c9s): macros for version and release, numbered Patch tags with
# gaps (one inside a conditional), %autosetup -p1, a long %changelog newest first.
EL9_SPEC = """\
%define glibcsrcdir glibc-2.34
%define glibcversion 2.34
%define glibcrelease 100%{?dist}
Summary: The GNU libc libraries
Name: glibc
Version: %{glibcversion}
Release: %{glibcrelease}
License: LGPLv2+ and LGPLv2+ with exceptions and GPLv2+
URL: http://www.gnu.org/software/glibc/
Source0: %{?glibc_release_url}%{glibcsrcdir}.tar.xz
Source1: nscd.conf
Patch1: glibc-fedora-nscd.patch
Patch3: glibc-rh697421.patch
Patch1046: glibc-rh2212222-1.patch
%if 0%{?rhel} >= 9
Patch1047: glibc-rh2212222-2.patch
%endif

BuildRequires: gcc >= 11.2.1
%description
The glibc package contains standard libraries.

%package common
Summary: Common binaries and locale data for glibc
%description common
common

%prep
%autosetup -n %{glibcsrcdir} -p1

chmod +x benchtests/scripts/*.py scripts/pylint

%build
make

%changelog
* Fri Feb 16 2024 Florian Weimer <fweimer@example.com> - 2.34-100
- Fix something (RHEL-2122)

* Mon Feb 12 2024 Someone Else <else@example.com> - 2.34-99
- Earlier
"""

SETUP_SPEC = """\
Name: glibc
Version: 2.28
Release: 236%{?dist}
Summary: The GNU libc libraries (EL8 style)
License: LGPLv2+
Source0: glibc-2.28.tar.xz
Patch2: glibc-fedora-nscd.patch
Patch7: glibc-rh1234.patch
%description
old style
%prep
%setup -q -n glibc-2.28
%patch2 -p1
%if 0%{?rhel}
%patch7 -p1
%endif
rm -rf x
%build
make
%changelog
* Tue Jan 09 2024 Someone <s@example.com> - 2.28-236
- older
"""


def series(tmp_path: Path, **patches_: str) -> list[quilt.Patch]:
    d = tmp_path / "series-dir"
    d.mkdir(exist_ok=True)
    lines = []
    for name, strip in patches_.items():
        (d / name).write_text(make_patch("a.c", "x\n", "y\n"))
        lines.append(name if strip == "1" else f"{name} -p{strip}")
    (d / "series").write_text("\n".join(lines) + "\n")
    return quilt.read_series(d)


def test_el9_spec_gets_our_tags_above_its_own_the_suffix_and_a_changelog_entry(tmp_path: Path) -> None:
    ours = series(tmp_path, **{"0001-csu-xsc-banner.patch": "1", "0002-more.patch": "1"})
    text, added = glibcrpm.patch_spec(EL9_SPEC, ours, ".isobuild1", "glibc.spec")
    assert [(p.number, p.source) for p in added] == [(1048, "isobuild-0001-csu-xsc-banner.patch"),
                                                     (1049, "isobuild-0002-more.patch")]
    lines = text.splitlines()
    # after the last Patch tag -- outside the %if it sits in -- and nothing else moved
    at = lines.index("%endif")
    assert lines[at + 1:at + 4] == ["# isobuild: patches/glibc/series", "Patch1048: isobuild-0001-csu-xsc-banner.patch",
                                    "Patch1049: isobuild-0002-more.patch"]
    assert "Release: %{glibcrelease}.isobuild1" in lines
    # %autosetup applies every Patch tag: no %patch line is added
    assert not [line for line in lines if line.startswith("%patch")]
    # the entry is dated like the newest one (deterministic; rpm wants them newest first)
    at = lines.index("%changelog")
    assert lines[at + 1:at + 5] == [
        "* Fri Feb 16 2024 isobuild <isobuild@localhost>",
        f"- isobuild: patches/glibc/series: 0001-csu-xsc-banner.patch (sha256 {ours[0].sha256[:16]})",
        f"- isobuild: patches/glibc/series: 0002-more.patch (sha256 {ours[1].sha256[:16]})",
        "", ]
    assert lines[at + 5] == "* Fri Feb 16 2024 Florian Weimer <fweimer@example.com> - 2.34-100"
    # the rest of the spec is unchanged
    added_lines = {"# isobuild: patches/glibc/series", "* Fri Feb 16 2024 isobuild <isobuild@localhost>"}
    assert [line for line in lines if line and line not in added_lines and not line.startswith(
        ("Patch1048:", "Patch1049:", "- isobuild:"))] == \
        [line for line in EL9_SPEC.replace("Release: %{glibcrelease}", "Release: %{glibcrelease}.isobuild1")
         .splitlines() if line]


def test_setup_and_patch_spec_also_gets_patch_lines_after_its_last(tmp_path: Path) -> None:
    ours = series(tmp_path, **{"0001-a.patch": "1", "0002-b.patch": "0"})
    text, added = glibcrpm.patch_spec(SETUP_SPEC, ours, ".isobuild1", "glibc.spec")
    assert [p.number for p in added] == [8, 9]
    lines = text.splitlines()
    prep = lines[lines.index("%prep"):lines.index("%build")]
    assert prep == ["%prep", "%setup -q -n glibc-2.28", "%patch2 -p1", "%if 0%{?rhel}", "%patch7 -p1", "%endif",
                    "%patch -P 8 -p1", "%patch -P 9 -p0", "rm -rf x"]
    assert lines[lines.index("Patch7: glibc-rh1234.patch") + 1:][:3] == [
        "# isobuild: patches/glibc/series", "Patch8: isobuild-0001-a.patch", "Patch9: isobuild-0002-b.patch"]
    assert "Release: 236%{?dist}.isobuild1" in lines


def test_real_rpmspec_reads_the_edited_specs(tmp_path: Path) -> None:
    """rpm's own parser takes the result: our tags are patches, the release carries the suffix."""
    ours = series(tmp_path, **{"0001-a.patch": "1"})
    for name, spec, release in (("el9", EL9_SPEC, "100.el9.isobuild1"), ("setup", SETUP_SPEC, "236.el9.isobuild1")):
        text, _ = glibcrpm.patch_spec(spec, ours, ".isobuild1", "glibc.spec")
        path = tmp_path / f"{name}.spec"
        path.write_text(text)
        out = subprocess.run(["rpmspec", "-q", "--srpm", "--define", "dist .el9", "--qf", "%{RELEASE}\n[%{PATCH}\n]",
                              str(path)], capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == release and "isobuild-0001-a.patch" in out[1:], out


def test_a_spec_that_applies_no_patches_in_prep_is_refused(tmp_path: Path) -> None:
    spec = SETUP_SPEC.replace("%patch2 -p1\n", "").replace("%patch7 -p1\n", "")
    with pytest.raises(UserError) as exc:
        glibcrpm.patch_spec(spec, series(tmp_path, **{"0001-a.patch": "1"}), ".isobuild1", "glibc-2.28.src.rpm: x.spec")
    assert exc.value.exit_code == ExitCode.USER
    assert exc.value.message == ("glibc-2.28.src.rpm: x.spec: %prep has no %autosetup, %autopatch or %patch line: "
                                 "isobuild cannot tell how the spec applies patches")
    # %autosetup -N applies nothing either
    with pytest.raises(UserError, match="%prep has no %autosetup, %autopatch or %patch line"):
        glibcrpm.patch_spec(EL9_SPEC.replace("-p1\n", "-N\n"), series(tmp_path, **{"0001-a.patch": "1"}), ".x", "s")


def test_a_p0_patch_under_autosetup_p1_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        glibcrpm.patch_spec(EL9_SPEC, series(tmp_path, **{"0001-a.patch": "1", "0002-flat.patch": "0"}), ".x", "s")
    assert exc.value.message == ("patch 0002-flat.patch is applied with -p0, but the spec's %autosetup applies every "
                                 "patch with -p1")


def test_numbering_without_patch_tags_starts_at_zero_after_the_sources(tmp_path: Path) -> None:
    spec = "\n".join(line for line in SETUP_SPEC.splitlines() if not line.startswith(("Patch", "%patch")))
    spec = spec.replace("%setup -q -n glibc-2.28", "%autosetup -p1")
    text, added = glibcrpm.patch_spec(spec, series(tmp_path, **{"0001-a.patch": "1"}), ".isobuild1", "s")
    assert [p.number for p in added] == [0]
    lines = text.splitlines()
    assert lines[lines.index("Source0: glibc-2.28.tar.xz") + 2] == "Patch0: isobuild-0001-a.patch"


@pytest.mark.parametrize(("a", "b", "order"), [
    ("2.34-100.el9_4.2", "2.34-100.el9_4.2.isobuild1", -1),
    ("2.34-100.el9_4.2.isobuild1", "2.34-100.el9_4.2", 1),
    ("2.34-100.el9~isobuild1", "2.34-100.el9", -1),  # '~' sorts before anything: a downgrade
    ("2.34-100.el9.2.isobuild1", "2.34-100.el9_4.2", -1),  # another dist: a downgrade too
    ("2.34-101.el9", "2.34-100.el9.isobuild1", 1),  # the repositories moved on
    ("1:2.28-1.el9", "2.34-1.el9", 1),  # epoch first
    ("2.34-3.el9", "2.34-3.el9", 0),
])
def test_vercmp_is_rpms_own_order(a: str, b: str, order: int) -> None:
    assert glibcrpm.vercmp(a, b) == order


def test_vercmp_refuses_what_is_not_a_version() -> None:
    with pytest.raises(UserError, match=re.escape("'2.34\"); os.exit(1' is not an rpm")):
        glibcrpm.vercmp('2.34"); os.exit(1', "2.34-1")


# --- the stage on a project --------------------------------------------------------------------


def el_project(tmp_path: Path, **glibc: Any) -> ELPlugin:
    """A project whose alma.yaml rebuilds a fake glibc source RPM (made with the real rpmbuild)."""
    root = tmp_path / "project"
    for sub in ("distros", "kickstart", "patches/glibc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "kickstart/el-live.ks.j2", root / "kickstart")
    (root / "isobuild.yaml").write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work")}))
    (root / "patches/glibc/0001-xsc.patch").write_text(make_patch("banner.c", DISTRO, OURS))
    (root / "patches/glibc/series").write_text("0001-xsc.patch\n")
    srpm = tmp_path / "distro" / "top" / "SRPMS" / "glibc-2.34-3.el9.src.rpm"
    if not srpm.exists():
        srpm = make_srpm(tmp_path / "distro")
    data = yaml.safe_load((REPO / "distros/alma.yaml").read_text())
    data.update(build="dnf", repositories=[{"name": "el-test", "baseurl": "file:///nonexistent", "gpgcheck": False}])
    data["glibc"].update({"srpm": {"type": "file", "path": str(srpm), "sha256": sha256(srpm)}, **glibc})
    (root / "distros/alma.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    plugin = distros.load(load_project(root / "isobuild.yaml"), "alma")
    assert isinstance(plugin, ELPlugin)
    log.setup()  # the stages log as under the CLI (an earlier CLI test may have left a closed stream)
    return plugin


def test_srpm_checksum_mismatch_names_the_file_and_both_hashes(tmp_path: Path) -> None:
    plugin = el_project(tmp_path, srpm={"type": "file", "path": "glibc.src.rpm", "sha256": "0" * 64})
    (plugin.project.root / "glibc.src.rpm").write_bytes(b"not the pinned one")
    with pytest.raises(UserError) as exc:
        glibcrpm.plan(plugin)
    assert exc.value.exit_code == ExitCode.USER
    actual = sha256(plugin.project.root / "glibc.src.rpm")
    assert exc.value.message == (f"{plugin.project.root}/glibc.src.rpm: checksum mismatch: distros/alma.yaml pins "
                                 f"glibc.srpm.sha256 {'0' * 64}, the file has {actual}")


def test_srpm_that_is_missing_or_not_glibcs_is_named(tmp_path: Path) -> None:
    plugin = el_project(tmp_path, srpm={"type": "file", "path": "nowhere.src.rpm", "sha256": "0" * 64})
    with pytest.raises(UserError, match=r"nowhere.src.rpm: glibc source RPM not found \(distros/alma.yaml: "
                                        r"glibc.srpm.path\)"):
        glibcrpm.plan(plugin)
    other = tmp_path / "other.src.rpm"
    srpm = next((tmp_path / "distro/top/SRPMS").glob("*.src.rpm"))
    binary = tmp_path / "distro-bin"
    make_srpm(binary, binaries=True)
    rpm = next((binary / "top/RPMS").glob("*/glibc-common-*.rpm"))
    shutil.copy(rpm, other)
    plugin = el_project(tmp_path, srpm={"type": "file", "path": str(other), "sha256": sha256(other)})
    with pytest.raises(UserError) as exc:
        glibcrpm.plan(plugin)
    assert exc.value.message == f"{other}: not a glibc source RPM (it is glibc-common 2.34-3.el9, a bin package)"
    assert srpm.exists()


@pytest.mark.parametrize(("glibc", "message"), [
    ({"srpm": {"type": "file", "path": "x.src.rpm"}}, "alma.yaml: glibc.srpm: type 'file' needs both 'path' and"),
    ({"srpm": {"type": "git"}}, "alma.yaml: glibc.srpm.type: expected one of 'repo', 'file'"),
    ({"release_suffix": "-isobuild1"}, "alma.yaml: glibc.release_suffix: must be up to 32 of"),
    ({"dist": "el9"}, "alma.yaml: glibc.dist: must be '.' then"),
    ({"buildroot_packages": ["rpm build"]}, "glibc: buildroot_packages: 'rpm build' is not a package"),
    ({"source_repositories": [{"name": "el-test", "baseurl": "http://m.invalid/", "gpgcheck": False}]},
     "glibc.source_repositories: el-test is also in repositories"),
    ({"source_repositories": [{"name": "src", "baseurl": "http://m.invalid/", "gpgcheck": False},
                              {"name": "src", "baseurl": "http://n.invalid/", "gpgcheck": False}]},
     "glibc: source_repositories: names must differ (got src, src)"),
])
def test_bad_glibc_settings_name_the_key(tmp_path: Path, glibc: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as exc:
        el_project(tmp_path, **glibc)
    assert exc.value.exit_code == ExitCode.USER
    assert message in exc.value.message


def test_unreachable_source_repository_is_an_infrastructure_error_naming_it(tmp_path: Path) -> None:
    repo = tmp_path / "binary"
    (repo / "repodata").mkdir(parents=True)
    (repo / "repodata/repomd.xml").write_text("<repomd/>")
    plugin = el_project(tmp_path, srpm={"type": "repo"}, source_repositories=[
        {"name": "baseos-source", "baseurl": "http://127.0.0.1:9/el/$releasever/BaseOS/Source/", "gpgcheck": False}])
    plugin.settings.repositories[0].baseurl = f"file://{repo}"
    with pytest.raises(InfraError) as exc:
        glibcrpm.download_srpm(plugin, tmp_path / "log")
    assert exc.value.exit_code == ExitCode.INFRA
    assert exc.value.message.startswith("repository 'baseos-source' of distros/alma.yaml is unreachable: "
                                        "http://127.0.0.1:9/el/9/BaseOS/Source/")
    assert not (tmp_path / "log").exists(), "dnf never ran"


def test_no_source_repositories_for_type_repo_is_named(tmp_path: Path) -> None:
    plugin = el_project(tmp_path, srpm={"type": "repo"}, source_repositories=[])
    with pytest.raises(UserError, match=r"distros/alma\.yaml: glibc\.source_repositories: none configured"):
        glibcrpm.download_srpm(plugin, tmp_path / "log")


def test_download_argv_uses_only_dnfs_download_plugin(tmp_path: Path) -> None:
    assert glibcrpm.download_argv(tmp_path / "dnf.conf", tmp_path / "root", "9", tmp_path / "out") == [
        "dnf", "-y", f"--installroot={tmp_path}/root", "--releasever=9", f"--config={tmp_path}/dnf.conf",
        "--disableplugin=*", "--enableplugin=download", "--refresh", "download", "--source",
        f"--destdir={tmp_path}/out", "glibc"]


def test_key_follows_series_suffix_srpm_and_build_path(tmp_path: Path) -> None:
    plugin = el_project(tmp_path)
    base = glibcrpm.plan(plugin)
    assert base.inputs["srpm"] == {"file": "glibc-2.34-3.el9.src.rpm", "sha256": base.srpm.sha256}
    assert base.dist == ".el9" and base.build_path == "dnf" and base.version == "2.34-3.el9.isobuild1"
    assert glibcrpm.plan(plugin).key == base.key  # same inputs, same key
    patch = plugin.project.root / "patches/glibc/0001-xsc.patch"
    patch.write_text(patch.read_text() + "\n")
    changed_series = glibcrpm.plan(plugin)
    assert changed_series.key != base.key
    suffix = glibcrpm.plan(el_project(tmp_path, release_suffix=".isobuild2"))
    mock = glibcrpm.plan(_with(tmp_path, build="mock"))
    srpm2 = make_srpm(tmp_path / "distro2", dist=".el9_4")
    other = glibcrpm.plan(el_project(tmp_path, srpm={"type": "file", "path": str(srpm2), "sha256": sha256(srpm2)}))
    keys = {base.key, changed_series.key, suffix.key, mock.key, other.key}
    assert len(keys) == 5
    assert other.dist == ".el9_4", "the dist of the source RPM's own release"
    assert mock.inputs["mock"] == "almalinux-9-x86_64" and mock.inputs["buildroot"] is None


def _with(tmp_path: Path, **distro: Any) -> ELPlugin:
    plugin = el_project(tmp_path)
    path = plugin.project.root / "distros/alma.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(distro)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = distros.load(plugin.project, "alma")
    assert isinstance(loaded, ELPlugin)
    return loaded


def test_mock_rebuild_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = glibcrpm.plan(_with(tmp_path, build="mock"))
    srpm, result = tmp_path / "glibc-2.34-3.el9.isobuild1.src.rpm", tmp_path / "result"
    calls: list[list[str]] = []
    monkeypatch.setattr(runner, "run", lambda argv, **kw: calls.append([str(a) for a in argv]))
    glibcrpm.rebuild(p, srpm, result, tmp_path / "log")
    assert calls == [["mock", "-r", "almalinux-9-x86_64", "--uniqueext=isobuild-alma", "--rebuild", str(srpm),
                      f"--resultdir={result}", "--define", "dist .el9", "--nocheck"]]


def test_dnf_buildroot_and_rebuild_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dnf path: mock's base packages + the source RPM's BuildRequires into a fresh buildroot,
    then rpmbuild --rebuild inside it (chroot), laid out like mock's /builddir."""
    p = glibcrpm.plan(el_project(tmp_path, check=True))
    srpm = make_srpm(tmp_path / "patched")
    real_run = runner.run
    calls: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> Any:
        if argv[0] == "rpm":  # the BuildRequires query runs for real
            return real_run(argv, **kw)
        argv = [str(a) for a in kw.get("display") or argv]  # a command in the namespaces: what it runs
        calls.append(argv)
        if argv[0] == "chroot":  # what rpmbuild would make
            rpms = Path(argv[1]) / "builddir/build/RPMS/x86_64"
            rpms.mkdir(parents=True)
            (rpms / "glibc-2.34-3.el9.isobuild1.x86_64.rpm").write_text("rpm")
        return runner.Result(list(argv), 0, 0.0, "")

    probed: list[str] = []
    monkeypatch.setattr(dnf, "probe", lambda repo, *args, **kw: probed.append(repo.name))
    monkeypatch.setattr(runner, "run", run)
    result = tmp_path / "result"
    glibcrpm.rebuild(p, srpm, result, tmp_path / "log")
    assert probed == ["el-test"], "the distribution's repositories are probed before dnf runs"
    buildroot = p.tree / "buildroot"
    install = calls[0]
    assert install == dnf.install_argv(buildroot, p.tree / "dnf/dnf.conf", "9", [
        "bash", "bzip2", "coreutils", "cpio", "diffutils", "redhat-release", "findutils", "gawk",
        "glibc-minimal-langpack", "grep", "gzip", "info", "patch", "redhat-rpm-config", "rpm-build", "sed",
        "shadow-utils", "tar", "unzip", "util-linux", "which", "xz", "gcc", "make >= 4.0"])
    conf = (p.tree / "dnf/dnf.conf").read_text()
    assert "[el-test]\nname=el-test\nbaseurl=file:///nonexistent" in conf and "isobuild-local" not in conf
    chroot = [c for c in calls if c[0] == "chroot"]
    assert chroot == [["chroot", str(buildroot), "rpmbuild", "--rebuild", "--define", "_topdir /builddir/build",
                       "--define", "dist .el9", f"/builddir/{srpm.name}"]]
    assert not [c for c in calls if c[0] in ("mount", "umount")], "mounts live in the command's namespaces"
    assert [f.name for f in result.iterdir()] == ["glibc-2.34-3.el9.isobuild1.x86_64.rpm"]
    assert not buildroot.exists(), "the buildroot goes once the RPMs are out"


def test_missing_buildrequires_point_at_repositories_not_packages(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # dnf's "No match" for the buildroot names the packages and says where the fix is:
    # the repositories (CRB on EL9), not the root's 'packages'
    p = glibcrpm.plan(el_project(tmp_path))
    srpm = make_srpm(tmp_path / "patched")
    real_run = runner.run

    def run(argv: list[str], **kw: Any) -> Any:
        if argv[0] == "dnf":
            raise runner.CommandFailed(list(argv), 1, None, ["No match for argument: glibc-static",
                                                             "Error: Unable to find a match: glibc-static"], [],
                                       "dnf ...")
        return real_run(argv, **kw)

    monkeypatch.setattr(dnf, "probe", lambda *args, **kw: None)
    monkeypatch.setattr(runner, "run", run)
    with pytest.raises(UserError) as exc:
        glibcrpm.rebuild(p, srpm, tmp_path / "result", tmp_path / "log")
    assert exc.value.message.endswith(
        "glibc buildroot package(s) glibc-static not found in the configured repositories")
    assert "'repositories'" in (exc.value.hint or "") and "CRB" in (exc.value.hint or "")
    assert "fix 'packages'" not in (exc.value.hint or "")
    assert not (p.tree / "buildroot").exists(), "no half-made buildroot left behind"


def test_install_glibc_picks_the_roots_packages(tmp_path: Path) -> None:
    meta = {"rpms": [{"package": n, "file": f"{n}-2.34-3.el9.isobuild1.x86_64.rpm"}
                     for n in ("glibc", "glibc-common", "glibc-minimal-langpack", "glibc-langpack-de")]}
    picked = glibcrpm.rpms_for(meta, tmp_path, {"glibc", "glibc-common", "glibc-minimal-langpack", "bash"})
    assert [p.name for p in picked] == ["glibc-2.34-3.el9.isobuild1.x86_64.rpm",
                                        "glibc-common-2.34-3.el9.isobuild1.x86_64.rpm",
                                        "glibc-minimal-langpack-2.34-3.el9.isobuild1.x86_64.rpm"]
    assert all(p.parent == tmp_path / "rpms" for p in picked)


def test_the_boot_check_asks_rpm_for_glibc_on_el_roots(tmp_path: Path) -> None:
    from builder.stages import rootfs

    deb = rootfs.smoke_script("/sys/kernel/xsc/version", "XSC extensions:")
    rpm = rootfs.smoke_script("/sys/kernel/xsc/version", "XSC extensions:", "rpm")
    assert "say \"GLIBC $(dpkg-query -W -f='${Version}' libc6 2>/dev/null)\"" in deb.splitlines()
    assert "say \"GLIBC $(rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}' glibc 2>/dev/null)\"" in \
        rpm.splitlines()
    assert deb.replace("dpkg-query -W -f='${Version}' libc6", "Q") == \
        rpm.replace("rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}' glibc", "Q")
    # the query prints what the stage's metadata says: run it against an rpm database holding our glibc
    binary = tmp_path / "bin"
    make_srpm(binary, binaries=True)
    rpm_file = next((binary / "top/RPMS").glob("*/glibc-2.34-*.rpm"))
    root = tmp_path / "root"
    subprocess.run(["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-i", "--nodeps", "--noscripts",
                    str(rpm_file)], check=True, capture_output=True)
    out = subprocess.run(["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-q", "--qf",
                          "%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}", "glibc"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, HOME=str(tmp_path))).stdout
    assert out == "2.34-3.el9"
