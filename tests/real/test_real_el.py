"""The EL plugin for real, as far as this machine allows: AlmaLinux and Rocky
mirrors are unreachable here and mock/lorax are not installable on Debian.

- the dnf path: ``isobuild alma`` installs a root with the real dnf, rpm and
  createrepo_c from a repository built here with rpmbuild plus the ``ci``
  kernel's RPM (builder.tools.kpkg), and masters the ISO (the rpm database must land in
  the root's /var/lib/rpm, where EL looks);
- the EL live layout boots: EL's initramfs step (dracut with dmsquash-live),
  configuration, ``LiveOS/squashfs.img`` and ``root=live:CDLABEL=`` over a
  root that has dracut-live -- Debian's, the one such root this machine can
  make -- through the same rootfs, ISO and smoke stages, in QEMU;
- an unreachable repository and an unknown package fail clearly;
- the glibc RPM: the glibc-rpm stage rebuilds a fake glibc source RPM (the EL buildroot, which needs
  EL repositories, replaced by host rpmbuild of the same patched source RPM) and ``install_glibc``
  upgrades the stand-in repository's older glibc in the dnf-built root to it with the real dnf,
  holds it, and refuses a root whose glibc is newer than ours.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pycdlib
import pytest
import yaml

from builder import distros, pipeline
from builder.distros.debian import DebianPlugin, DebianSettings
from builder.distros.el import ELPlugin, ELSettings
from builder.infra import log
from builder.infra.config import Project, load_project
from builder.infra.errors import ExitCode, UserError
from builder.stages import glibcrpm, smoke
from builder.stages.glibcrpm import Repository
from builder.stages.iso import IsoStage
from builder.stages.kernel import KernelStage
from builder.stages.kpackage import KernelPackageStage
from builder.stages.rootfs import RootfsStage
from builder.tools import iso9660
from tests.conftest import Events, sha256
from tests.orchestration.test_el_tests_root import BASE_SPEC
from tests.orchestration.test_elglibc_fake import SPEC, XSC_PATCH, host_rebuild, make_srpm
from tests.orchestration.test_elglibc_fake import rpmbuild as fake_rpmbuild
from tests.real.conftest import WORK, current, run

pytestmark = pytest.mark.real

MODES = "bios-cd,bios-usb,uefi-cd,uefi-usb" if os.environ.get("ISOBUILD_FULL") else "bios-cd,uefi-usb"
RELEASE_RPM = "6.1.192_isobuild"  # the kernel RPM's Version for the ci kernel's release (binrpm-pkg's form)

# Stand-ins for the distribution's packages: a shell and the account files (BASE_SPEC, shared with the
# orchestration tier's EL build-root test), and a dracut that records how it was called.
DRACUT_SPEC = """\
Name: dracut-live
Version: 1
Release: 1
Summary: stands in for EL's dracut-live: the "initramfs" records the call
License: GPL
AutoReqProv: no
Requires: isobuild-test-base
%description
test dracut
%install
mkdir -p %{buildroot}/usr/bin
cat > %{buildroot}/usr/bin/dracut <<'EOF'
#!/bin/sh
for a in "$@"; do case "$a" in /boot/*) out="$a";; esac; done
echo "test-dracut $*" > "$out"
EOF
chmod 755 %{buildroot}/usr/bin/dracut
%files
/usr/bin/dracut
"""


def rpmbuild(spec: str, name: str, work: Path) -> Path:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_topdir {work / 'top'}\n")
    (work / f"{name}.spec").write_text(spec)
    subprocess.run(["rpmbuild", "-bb", "--quiet", str(work / f"{name}.spec")], check=True, capture_output=True,
                   env=dict(os.environ, HOME=str(home)))
    (rpm,) = (work / "top/RPMS").glob(f"*/{name}-1-1.*.rpm")
    return rpm


GLIBC_OURS = "2.34-3.el9.isobuild1"  # the fake glibc source RPM's version + the release suffix


@pytest.fixture(scope="module")
def fake_glibc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake glibc source RPM (2.34-3.el9) and, in top/RPMS, the distribution's build of it."""
    return make_srpm(tmp_path_factory.mktemp("el-glibc"), binaries=True)


@pytest.fixture(scope="module")
def test_repo(tmp_path_factory: pytest.TempPathFactory, fake_glibc: Path) -> Path:
    """A dnf repository of the stand-in packages (the distribution's glibc 2.34-3.el9 among them),
    made with rpmbuild and createrepo_c."""
    work = tmp_path_factory.mktemp("el-repo")
    repo = work / "repo"
    repo.mkdir()
    for name, spec in (("isobuild-test-base", BASE_SPEC), ("dracut-live", DRACUT_SPEC)):
        rpm = rpmbuild(spec, name, work)
        os.replace(rpm, repo / rpm.name)
    for rpm in (fake_glibc.parent.parent / "RPMS").glob("*/*.rpm"):
        shutil.copy(rpm, repo)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    return repo


def edit(path: Path, **changes: object) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def alma(project: Path, test_repo: Path, fake_glibc: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project with distros/alma.yaml on the test repository, built with dnf; its glibc RPM is
    the fake glibc source RPM rebuilt with the series (by host rpmbuild: no EL buildroot here)."""
    glibc = yaml.safe_load((project / "distros/alma.yaml").read_text())["glibc"]
    glibc.update(srpm={"type": "file", "path": str(fake_glibc), "sha256": sha256(fake_glibc)})
    edit(project / "distros/alma.yaml", build="dnf",
         repositories=[{"name": "test-base", "baseurl": f"file://{test_repo}", "gpgcheck": False}],
         packages=["isobuild-test-base", "kernel", "dracut-live", "glibc", "glibc-common"], glibc=glibc)
    # a series that applies to the fake glibc (the project's own is for the real one)
    series = project / "patches/glibc"
    for old in series.glob("*.patch"):
        old.unlink()
    (series / "0001-csu-xsc-banner.patch").write_text(XSC_PATCH)
    (series / "series").write_text("0001-csu-xsc-banner.patch\n")
    monkeypatch.setattr(glibcrpm, "rebuild_in", host_rebuild([]))
    return project


def unpacked(initramfs: Path) -> bytes:
    """An initramfs's cpio archive (gzip, zstd or xz compressed), file names and all."""
    data = initramfs.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return lzma.decompress(data)


def unsquash(squashfs: Path, into: Path) -> Path:
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(into), str(squashfs)], check=True, capture_output=True)
    return into


def test_dnf_path_builds_the_iso_with_our_kernel_rpm_and_the_rpmdb_where_el_keeps_it(
        alma: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(alma, "alma", "--profile", "ci", "--no-smoke") == 0, capsys.readouterr().err
    kernel_meta = json.loads((current(alma, "kernel-ci-x86_64") / "metadata.json").read_text())
    release = kernel_meta["kernel_release"]
    assert release.replace("-", "_") == RELEASE_RPM
    image = alma / "iso/alma/isobuild-alma.iso"
    manifest = json.loads((alma / "iso/alma/isobuild-alma.manifest.json").read_text())
    packages = {p["package"]: p["version"] for p in manifest["packages"]}
    # our kernel from the local repository, the stand-ins from theirs, and never our kernel-headers;
    # our glibc RPMs over the repository's older ones (glibc-minimal-langpack: not in the root, not added)
    assert packages == {"kernel": f"{RELEASE_RPM}-1", "isobuild-test-base": "1-1", "dracut-live": "1-1",
                        "glibc": GLIBC_OURS, "glibc-common": GLIBC_OURS}
    assert manifest["glibc"]["version"] == GLIBC_OURS and manifest["glibc"]["marker"] == "XSC extensions:"
    assert manifest["kernel_release"] == release and manifest["label"] == "ISOBUILD_ALMA"
    assert manifest["cmdline"].startswith("root=live:CDLABEL=ISOBUILD_ALMA rd.live.image rd.live.overlay.overlayfs=1")

    artifact = WORK / "distros/alma/rootfs" / manifest["rootfs_key"]
    root = unsquash(artifact / "filesystem.squashfs", tmp_path / "root")
    # the rpm database is where EL's rpm reads it, not in a ~/.rpmdb of the host's making
    assert (root / "var/lib/rpm/rpmdb.sqlite").is_file()
    assert not list(root.glob("root/.rpmdb")) and not list(root.glob("**/.rpmdb"))
    query = subprocess.run(["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-q", "kernel"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert query == [f"kernel-{RELEASE_RPM}-1.x86_64"]
    query = subprocess.run(["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-q", "glibc", "glibc-common"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert query == [f"glibc-{GLIBC_OURS}.x86_64", f"glibc-common-{GLIBC_OURS}.x86_64"]
    # the patched program, and the boot check asking rpm (not dpkg) for glibc's version
    assert "XSC extensions: fake 1" in subprocess.run([str(root / "usr/bin/glibc-banner")], capture_output=True,
                                                      text=True, check=True).stdout
    assert "rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}' glibc" in \
        (root / "usr/local/sbin/isobuild-smoke").read_text()
    # EL's live steps: modules indexed, the initramfs asked for with dmsquash-live, root locked,
    # the kernel held, the boot check enabled, no cache or log left
    assert (root / f"lib/modules/{release}/modules.dep").is_file()
    assert (artifact / "initrd.img").read_text().split() == [
        "test-dracut", "--force", "--no-hostonly", "--reproducible", "--add", "dmsquash-live",
        f"/boot/initramfs-{release}.img", release]
    assert (root / "etc/shadow").read_text().startswith("root:!:")
    # held: the root's own dnf never replaces our glibc or kernel
    assert "excludepkgs=glibc glibc-common kernel kernel-core" in (root / "etc/dnf/dnf.conf").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/isobuild-smoke.service"
    assert os.readlink(wants) == "/etc/systemd/system/isobuild-smoke.service"
    # the kickstart's %post runs last, in the root, after our own writes: it empties fstab
    assert (root / "etc/fstab").read_text() == "" and (root / "etc/machine-id").read_text() == ""
    assert not list(root.glob("var/cache/dnf/*")) and not list(root.glob("var/log/dnf*"))

    # the EL live layout on the ISO, with our hybrid boot loaders
    info = iso9660.describe(image)
    assert info["label"] == "ISOBUILD_ALMA" and info["hybrid_mbr"]
    assert [e["platform"] for e in info["eltorito"]] == ["bios", "uefi"]
    reader = pycdlib.PyCdlib()
    reader.open(str(image))
    try:
        files = {f"{d}/{f}".replace("//", "/") for d, _, fs in reader.walk(rr_path="/") for f in fs}
        assert {"/LiveOS/squashfs.img", "/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img"} <= files, files
    finally:
        reader.close()
    grub = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/boot/grub/grub.cfg",
                           str(tmp_path / "grub.cfg")], capture_output=True)
    assert grub.returncode == 0, grub.stderr
    assert "linux /images/pxeboot/vmlinuz root=live:CDLABEL=ISOBUILD_ALMA rd.live.image" in \
        (tmp_path / "grub.cfg").read_text()

    # unchanged inputs: nothing is rebuilt
    events = Events(alma / "logs")
    assert run(alma, "alma", "--profile", "ci", "--no-smoke") == 0
    assert events.built() == set() and not {"dnf", "rpmbuild"} & set(events.commands())
    capsys.readouterr()
    assert run(alma, "status", "--profile", "ci", "--json") == 0
    rows = {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("rootfs", "alma")]["state"] == "built" and rows[("iso", "alma")]["state"] == "built"
    assert rows[("glibc-rpm", "alma")]["state"] == "built"
    assert rows[("glibc-rpm", "alma")]["detail"].startswith(f"{GLIBC_OURS}, 3 packages in ")
    # 'isobuild test alma' boots that ISO: the stand-in dracut made no real initramfs, so the kernel
    # finds no live root and panics -- reported as a failed check, with the console log
    assert run(alma, "test", "alma", "--profile", "ci", "--modes", "bios-cd") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "boot check failed in bios-cd: kernel panic: Kernel panic - not syncing" in err, err


def test_unreachable_repository_is_an_infrastructure_error_naming_it(alma: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    edit(alma / "distros/alma.yaml", repositories=[
        {"name": "baseos", "baseurl": "http://127.0.0.1:9/el/$releasever/BaseOS/$basearch/os/", "gpgcheck": False}])
    events = Events(alma / "logs")
    assert run(alma, "alma", "--profile", "ci", "--no-smoke") == ExitCode.INFRA
    err = capsys.readouterr().err
    assert "repository 'baseos' of distros/alma.yaml is unreachable: http://127.0.0.1:9/el/9/BaseOS/x86_64/os/" in err
    assert "Traceback" not in err
    assert "dnf" not in events.commands(), "refused before dnf ran"
    assert not list((WORK / "distros/alma/rootfs").glob(".root-*")), "no half-made root left behind"


def test_unknown_package_is_named(alma: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(alma / "distros/alma.yaml", packages=["isobuild-test-base", "kernel", "dracut-live", "no-such-package-el"])
    assert run(alma, "alma", "--profile", "ci", "--no-smoke") == ExitCode.USER
    err = capsys.readouterr().err
    assert "distros/alma.yaml: package(s) no-such-package-el not found in the configured repositories" in err


EXTRA_SPEC = """\
Name: isobuild-test-extra
Version: 1
Release: 1
Summary: a locally built package that needs one of the distribution's
License: GPL
AutoReqProv: no
Requires: isobuild-test-base
%description
extra
%install
mkdir -p %{buildroot}/etc
echo extra > %{buildroot}/etc/isobuild-extra
%files
/etc/isobuild-extra
"""


def test_install_packages_adds_local_rpms_with_dnf_and_holds_them(alma: Path, tmp_path: Path) -> None:
    """What a glibc RPM set would take: our packages with the root's own package manager, their
    dependencies from the distribution's repositories, and held there."""
    plugin = distros.load(load_project(alma / "isobuild.yaml"), "alma")
    assert isinstance(plugin, ELPlugin)
    log.setup()
    made = pipeline.ensure_kernel_packages(pipeline.ensure_kernel(plugin.project, "ci").stage, ["rpm"])[0]
    release = made.meta["kernel_release"]
    root, log_path = tmp_path / "root", tmp_path / "log"
    plugin.prepare(made.stage.files(), release, log_path)
    plugin.bootstrap(root, tmp_path / "cache", log_path)
    assert not plugin.local_repo.exists(), "the copy of our RPMs goes once installed"
    extra = rpmbuild(EXTRA_SPEC, "isobuild-test-extra", tmp_path / "build")
    plugin.install_packages(root, [extra], True, log_path)
    assert (root / "etc/isobuild-extra").read_text() == "extra\n"
    assert [r["package"] for r in plugin.manifest(root, log_path)] == [
        "dracut-live", "glibc", "glibc-common", "isobuild-test-base", "isobuild-test-extra", "kernel"]
    assert "excludepkgs=isobuild-test-extra" in (root / "etc/dnf/dnf.conf").read_text()


class DebianRootEL(ELPlugin):
    """EL's live steps over a Debian root with Debian's dracut and dracut-live (EL packages cannot
    be fetched here): bootstrap, kernel package and package list are Debian's; the initramfs
    (dracut --add dmsquash-live), configuration, cleanup of EL's leftovers, layout and kernel
    command line are the EL plugin's own."""

    kernel_package = "deb-image"

    def __init__(self, name: str, settings: ELSettings, project: Project, debian: DebianPlugin):
        super().__init__(name, settings, project)
        self.debian = debian

    def identity(self) -> dict[str, object]:
        return {**super().identity(), "build": "debian-root", "debian": self.debian.identity()}

    def prepare(self, kernel_packages: list[Path], release: str, log_path: Path) -> None:
        pass  # no local repository: the kernel comes as Debian's linux-image package

    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None:
        self.debian.bootstrap(root, cache.parent.parent / "debian" / "bookworm", log_path)

    def install_kernel(self, root: Path, kernel_packages: list[Path], release: str, log_path: Path,
                       epoch: int) -> None:
        (deb,) = [p for p in kernel_packages if p.name.startswith(f"linux-image-{release}_")]
        self.debian.install_packages(root, [deb], True, log_path)
        self.make_initramfs(root, release, log_path, epoch)

    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]:
        return self.debian.manifest(root, log_path)

    def cleanup(self, root: Path, log_path: Path) -> None:
        self.debian.cleanup(root, log_path)
        super().cleanup(root, log_path)


@pytest.fixture
def el_on_debian(project: Path) -> Iterator[DebianRootEL]:
    proj = load_project(project / "isobuild.yaml")
    settings = ELSettings(label="ISOBUILD_ELDEB", name="isobuild-eldeb",
                          repositories=[Repository("unused", baseurl="file:///nonexistent", gpgcheck=False)],
                          locale="C.UTF-8")
    debian = DebianPlugin("eldeb", DebianSettings(packages=["systemd-sysv", "dracut", "dracut-live", "zstd"]), proj)
    yield DebianRootEL("eldeb", settings, proj, debian)


def test_el_live_layout_boots_with_dmsquash_live(el_on_debian: DebianRootEL, project: Path) -> None:
    plugin = el_on_debian
    proj = plugin.project
    log.setup()  # the stages log as under the CLI (an earlier test's CLI run left its closed stream)
    kernel_stage = KernelStage(proj, "ci")
    kernel_meta = pipeline.ensure(kernel_stage).meta
    package = KernelPackageStage(kernel_stage, "deb-image")
    pipeline.ensure(package)
    rs = RootfsStage(plugin, package, None)
    isos = IsoStage(rs, plugin)
    assert isos.layout.squashfs == "LiveOS/squashfs.img"
    assert isos.layout.cmdline.startswith("root=live:CDLABEL=ISOBUILD_ELDEB rd.live.image rd.live.overlay.overlayfs=1")
    meta = pipeline.ensure(rs).meta
    pipeline.ensure(isos)
    assert {"dracut", "dracut-live", f"linux-image-{kernel_meta['kernel_release']}"} <= \
        {p["package"] for p in meta["packages"]}
    # the initramfs is dracut's with the live module: its root-finding script is in the archive
    assert b"sbin/dmsquash-live-root" in unpacked(rs.artifact / "initrd.img")
    with pipeline.locked(proj):
        verdicts = smoke.run(isos, MODES.split(","), lambda m: pipeline.stage_log(proj, f"smoke-eldeb-{m}"))
    for v in verdicts:
        assert v.status == "pass", (v.extra.get("mode"), v.reasons, v.tail)
        assert v.markers == {"UNAME": kernel_meta["kernel_release"], "MARKER": "1.0.0", "SYSTEM": "running",
                             "FAILED": "none"}
    console = Path(verdicts[0].log).read_text(errors="replace")
    assert "dmsquash-live" in console or "root=live:CDLABEL=ISOBUILD_ELDEB" in console


def test_the_kernel_rpm_is_made_from_the_kernel_artifact(project: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel's rpm package, made on demand from its artifact (no make): the image, the modules
    with their index, binrpm-pkg's install scriptlets, and never a kernel-headers RPM."""
    assert run(project, "kernel", "--profile", "ci", "--packages", "rpm") == 0, capsys.readouterr().err
    kernel_dir = current(project, "kernel-ci-x86_64")
    meta = json.loads((kernel_dir / "metadata.json").read_text())
    release = meta["kernel_release"]
    rpms = sorted(current(project, "kernel-package-ci.rpm-x86_64").glob("*.rpm"))
    assert [r.name for r in rpms] == [f"kernel-{RELEASE_RPM}-1.x86_64.rpm"]
    listing = subprocess.run(["rpm", f"--dbpath={tmp_path}", "-qpl", str(rpms[0])],
                             capture_output=True, text=True, check=True).stdout.split()
    assert {f"/boot/vmlinuz-{release}", f"/boot/System.map-{release}", f"/boot/config-{release}",
            f"/lib/modules/{release}/modules.dep"} <= set(listing)
    scripts = subprocess.run(["rpm", f"--dbpath={tmp_path}", "-qp", "--scripts", str(rpms[0])],
                             capture_output=True, text=True, check=True).stdout
    assert f"/sbin/installkernel {release}" in scripts and "kernel-install remove" in scripts
    plugin = ELPlugin("alma", ELSettings(repositories=[Repository("x", baseurl="file:///x", gpgcheck=False)]),
                      load_project(project / "isobuild.yaml"))
    assert plugin.kernel_rpms(rpms, release) == rpms
    extracted = subprocess.run(
        ["sh", "-c", f"rpm2cpio {rpms[0]} | cpio -i --quiet --to-stdout ./boot/vmlinuz-{release}"],
        capture_output=True, check=True).stdout
    assert extracted == (kernel_dir / "bzImage").read_bytes()


def test_a_root_whose_glibc_is_newer_than_ours_is_refused(alma: Path, fake_glibc: Path, tmp_path: Path) -> None:
    """The repositories moved on: a root with glibc 2.34-4.el9 (newer than our 2.34-3.el9.isobuild1)
    is never downgraded; the error says how to rebuild from their newest source RPM."""
    plugin = distros.load(load_project(alma / "isobuild.yaml"), "alma")
    assert isinstance(plugin, ELPlugin)
    log.setup()
    done = pipeline.ensure_glibc_rpm(glibcrpm.GlibcRpmStage(plugin))
    p, meta = done.stage, done.meta
    assert meta["version"] == GLIBC_OURS
    # the distribution's next build: the same sources, Release 4
    newer = tmp_path / "newer"
    shutil.copytree(fake_glibc.parent.parent / "SOURCES", newer / "top/SOURCES")
    spec = newer / "glibc.spec"
    spec.write_text(SPEC.replace("Release: 3%{?dist}", "Release: 4%{?dist}"))
    fake_rpmbuild(newer, "--define", "dist .el9", "--nodeps", "-bb", str(spec))
    (rpm,) = (newer / "top/RPMS").glob("*/glibc-2.34-4.el9.x86_64.rpm")
    root = tmp_path / "root"
    subprocess.run(["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-i", "--nodeps", "--noscripts", str(rpm)],
                   check=True, capture_output=True)
    with pytest.raises(UserError) as exc:
        plugin.install_glibc(root, p.artifact, meta, tmp_path / "log")
    assert exc.value.exit_code == ExitCode.USER
    assert exc.value.message == (f"the repositories moved on: glibc 2.34-4.el9 in the alma root is newer than ours "
                                 f"{GLIBC_OURS}")
    assert exc.value.hint == "rebuild it from their newest source RPM: isobuild alma --force-glibc"
    assert subprocess.run(["rpm", f"--root={root}", "--dbpath=/var/lib/rpm", "-q", "glibc"], capture_output=True,
                          text=True, check=True).stdout.split() == ["glibc-2.34-4.el9.x86_64"], "left as it was"
