"""The RHEL family (AlmaLinux, Rocky Linux): live roots for dracut's dmsquash-live.

AlmaLinux and Rocky are data (``distros/alma.yaml``, ``distros/rocky.yaml``)
over this one plugin.  Every build starts from a kickstart rendered from
``kickstart/*.ks.j2`` and validated when the distro file is loaded, before any
build (``builder/tools/kickstart.py``).  The root comes one of two ways, by what the
host has (``build: auto``; ``isobuild doctor`` says which):

- ``mock``, on an EL host with mock: livemedia-creator ``--make-iso --no-virt``
  installs the kickstart in a mock chroot (how AlmaLinux makes its own live
  media); the root filesystem is then taken out of the ISO it made.
- ``dnf``, anywhere else (Debian ships dnf, rpm, createrepo-c): ``dnf
  --installroot --releasever`` installs the kickstart's %packages from the
  same repositories in one transaction (``builder/tools/dnf.py``).

Either way the kernel is ours: its RPM (builder.tools.kpkg; never a kernel-headers
RPM, which would obsolete the distribution's that glibc-devel needs) in a local
repository made with createrepo_c.  Then the EL live steps: the module index, an
initramfs by dracut with dmsquash-live, the configuration, and the layout
``LiveOS/squashfs.img`` booted with ``root=live:CDLABEL=<label>
rd.live.image``.  The rootfs, ISO and smoke stages are Debian's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from builder.distros.base import LABEL, LOCALE, LiveSettings, Plugin, cmdline
from builder.infra import log, paths, runner
from builder.infra.config import Project, arch_names
from builder.infra.errors import InfraError, UserError
from builder.infra.hosttools import install_hint
from builder.infra.schema import matches, setting
from builder.stages import glibcrpm
from builder.stages.glibcrpm import (
    LOCAL_REPO,
    ELGlibcSettings,
    Repository,
    _distinct_names,
    _package_names,
    srpm_repos,
)
from builder.stages.iso import LiveLayout
from builder.stages.kpackage import Kind
from builder.tools import dnf, kickstart
from builder.tools.chroot import Chroot
from builder.tools.rootdir import Root

ARCH = "x86_64"
# inside the mock chroot: where the kickstart, our repository and livemedia-creator's results go
MOCK_KICKSTART = "/root/isobuild.ks"
MOCK_REPO = "/root/isobuild-repo"
MOCK_RESULT = "/root/isobuild-result"
MOCK_LOGS = "/root/isobuild-logs"
# what EL calls its kernel: held out of the image's own dnf so an update cannot bring a second one
KERNEL_NAMES = ("kernel", "kernel-core", "kernel-modules", "kernel-modules-core", "kernel-modules-extra")


def _release(value: Any) -> str | None:
    if value in kickstart.VERSIONS:
        return None
    known = ", ".join(sorted(kickstart.VERSIONS))
    return f"must be one of {known} (the EL releases isobuild can check a kickstart for)"


@dataclass
class MockSettings:
    config: str = setting("almalinux-9-x86_64", help="mock -r: the chroot configuration",
                          check=matches(r"[A-Za-z0-9._+-]+", "a mock configuration name"))
    packages: list[str] = setting(factory=lambda: ["lorax-lmc-novirt"],
                                  help="what the mock chroot needs to run livemedia-creator --no-virt")
    project: str = setting("AlmaLinux", help="livemedia-creator --project (the product name on the media)",
                           check=matches(r"[A-Za-z0-9 ._-]{1,64}", "a product name"))


def _default_packages() -> list[str]:
    return ["@core", "kernel", "dracut-live", "dracut-config-generic", "grub2-efi-x64", "grub2-efi-x64-cdboot",
            "shim-x64", "syslinux"]


@dataclass
class ELSettings(LiveSettings):
    family: Literal["el"] = setting("el", help="plugin family")
    name: str = setting("isobuild-el", help="ISO file name: iso/<distro>/<name>.iso",
                        check=matches(r"[A-Za-z0-9._-]{1,64}", "a file name of A-Z a-z 0-9 . _ -"))
    enabled: bool = setting(True, help="built by 'isobuild isos'")
    arches: list[str] = setting(factory=lambda: ["x86_64"], help="architectures this distro is built for "
                                "(x86_64 only in this version: the EL live boot path is verified there alone)",
                                check=arch_names)
    release: str = setting("9", help="EL release: dnf's $releasever, the kickstart's RHEL version", check=_release)
    build: Literal["auto", "mock", "dnf"] = setting(
        "auto", help="how the root is installed: mock + livemedia-creator (EL hosts), dnf --installroot "
        "(any host), or auto: mock when the host is EL and has mock, else dnf")
    repositories: list[Repository] = setting(factory=list, help="the distribution's repositories; the first is "
                                             "the kickstart's install source")
    packages: list[str] = setting(factory=_default_packages, help="the kickstart's %packages")
    locale: str = setting("en_US.UTF-8", help="LANG of the live system",
                          check=LOCALE)
    label: str = setting("ISOBUILD_EL", help="ISO volume label (root=live:CDLABEL=<label>)", check=LABEL)
    cmdline: str = setting("rd.live.overlay.overlayfs=1 console=ttyS0,115200 console=tty0",
                           help="kernel command line after root=live:CDLABEL=<label> rd.live.image", check=cmdline)
    kickstart: str = setting("kickstart/el-live.ks.j2", help="jinja2 template of the kickstart (project-relative)")
    root_size: int = setting(6144, help="MiB of the kickstart's / partition (livemedia-creator's image)",
                             check=lambda v: None if v >= 1024 else "must be >= 1024")
    mock: MockSettings = setting(factory=MockSettings, help="build: mock")
    glibc: ELGlibcSettings = setting(factory=ELGlibcSettings, help="the patched glibc RPM (builder/stages/glibcrpm.py)")

    def validate(self) -> str | None:
        if not self.repositories:
            return "repositories: at least one is needed (the first is the install source)"
        problem = _distinct_names("repositories", self.repositories) or _package_names("packages", self.packages)
        if problem:
            return problem
        names = [r.name for r in self.repositories]
        source_names = {r.name for r in self.glibc.source_repositories}
        if source_names & set(names):
            return f"glibc.source_repositories: {', '.join(sorted(source_names & set(names)))} is also in repositories"
        if re.search(r"(^|\s)(root|rd\.live\.image)(=|\s|$)", self.cmdline):
            return "cmdline: leave out root= and rd.live.image: isobuild puts root=live:CDLABEL=<label> first"
        return None


def el_host(os_release: Path = Path("/etc/os-release")) -> bool:
    """Is this machine of the RHEL family (or Fedora), where mock and lorax are packaged?"""
    try:
        text = os_release.read_text()
    except OSError:
        return False
    ids = " ".join(m.group(1) for m in re.finditer(r'^(?:ID|ID_LIKE)="?([^"\n]*)"?$', text, re.M)).split()
    return bool({"rhel", "fedora", "centos"} & set(ids))


def resolve_build(choice: str) -> tuple[str, str]:
    """(build path, why) for a ``build`` setting on this host."""
    if choice != "auto":
        return choice, f"set in the distro file (build: {choice})"
    if el_host() and shutil.which("mock"):
        return "mock", "EL host with mock: mock + livemedia-creator"
    return "dnf", "not an EL host with mock: dnf --installroot" if not el_host() else "EL host without mock: dnf"


def rpm_version(release: str) -> str:
    """binrpm-pkg's Version for a kernel release (RPM versions cannot hold '-')."""
    return release.replace("-", "_")


class ELPlugin(Plugin):
    family = "el"
    kernel_package: ClassVar[Kind] = "rpm"
    tests_headers: ClassVar[Kind] = "rpm-headers"
    kernel_in_bootstrap = True
    # builder/stages/glibcrpm.py: the distribution's glibc source RPM with our series
    glibc_format: ClassVar[str | None] = "rpm"
    settings: ELSettings

    def __init__(self, name: str, settings: Any, project: Project):
        super().__init__(name, settings, project)
        # rendered and checked now: a bad kickstart fails when the distro file is loaded, before any build
        self.kickstart = self._kickstart()

    # --- the kickstart ------------------------------------------------------------

    def template(self) -> Path:
        return paths.project_input(self.project.root, self.settings.kickstart, "kickstart", self.where, "file")

    def _kickstart(self, afresh: bool = False) -> kickstart.Kickstart:
        s = self.settings
        version = kickstart.VERSIONS[s.release]
        values = {"distro": self.name, "release": s.release, "template": s.kickstart, "version": version,
                  "locale": s.locale, "timezone": s.timezone, "hostname": s.hostname, "root_size": s.root_size,
                  "repositories": [asdict(r) for r in s.repositories], "packages": s.packages,
                  "local_repo": f"file://{MOCK_REPO}", "label": s.label}
        text = kickstart.render(self.template(), values, self.where)
        return kickstart.validate(text, version, f"kickstart {s.kickstart} (rendered for {self.where})",
                                  None if afresh else self.work / "kickstart-checked.json")

    # --- identity, paths ------------------------------------------------------------

    def build_path(self) -> str:
        return resolve_build(self.settings.build)[0]

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"family": self.family, "suite": f"el{s.release}", "release": s.release, "build": self.build_path(),
                "repositories": [asdict(r) for r in s.repositories],
                "kickstart": hashlib.sha256(self.kickstart.text.encode()).hexdigest(),
                "hostname": s.hostname, "locale": s.locale, "timezone": s.timezone,
                "mock": asdict(s.mock) if self.build_path() == "mock" else None,
                "squashfs": [s.squashfs.compression, s.squashfs.level],
                "overlay": self.overlay_digest()}

    def takes_glibc(self) -> bool:
        return self.settings.glibc.enabled

    @property
    def work(self) -> Path:
        return self.project.work_dir / "distros" / self.name

    @property
    def local_repo(self) -> Path:
        return self.work / LOCAL_REPO

    def repos(self) -> list[dnf.Repo]:
        """The distribution's repositories and ours; ours wins every name it has (priority)."""
        return [dnf.Repo(r.name, r.baseurl, r.mirrorlist, r.gpgkey, r.gpgcheck) for r in self.settings.repositories] \
            + [dnf.Repo(LOCAL_REPO, baseurl=f"file://{self.local_repo}", gpgcheck=False, priority=1)]

    def tests_root(self) -> dnf.BuildRoot:
        """The release's gcc from the distribution's repositories, by dnf (on any host with dnf)."""
        return dnf.BuildRoot(tuple(self.repos()[:-1]), self.settings.release, ARCH, ("gcc",),
                             self.work / "tests-root", self.project.work_dir / "cache" / self.family /
                             f"el{self.settings.release}", self.where)

    def check(self) -> None:
        """Overlay, host tools of the build path, kickstart sections the dnf path cannot run, and every
        repository reachable (10 s each) -- before any build."""
        arch = self.project.settings.arch
        if arch not in self.settings.arches or arch != "x86_64":
            raise UserError(f"{self.where}: {self.name} is built for x86_64 only in this version, not {arch}",
                            hint="build the EL images with --arch x86_64; arm64 and riscv64 images are Debian's")
        super().check()
        self.check_host()
        if self.build_path() == "dnf":
            host = self.kickstart.host_scripts()
            if host:
                raise UserError(f"kickstart {self.settings.kickstart} (rendered for {self.where}): "
                                f"{host[0].describe()} would run on the build host",
                                hint="the dnf path runs %post sections inside the root and nothing on the host: "
                                     "make it a %post, or build on an EL host with mock (build: mock)")
        self.probe_repositories()
        glibc = self.settings.glibc
        if self.project.settings.glibc.enabled and glibc.enabled and glibc.srpm.type == "repo":
            for repo in srpm_repos(self)[len(self.settings.repositories):]:
                dnf.probe(repo, self.settings.release, ARCH, self.where)

    def check_host(self) -> None:
        """The host tools this build path runs, before anything runs."""
        needed = {"dnf": ("dnf", "rpm", "createrepo_c"),
                  "mock": ("mock", "rpm", "createrepo_c", "unsquashfs")}[self.build_path()]
        missing = [tool for tool in needed if shutil.which(tool) is None]
        if missing:
            hint = "mock runs on EL hosts (dnf install mock lorax); elsewhere set build: dnf" \
                if "mock" in missing else install_hint(missing[0])
            raise InfraError(f"{', '.join(missing)} not found: the {self.build_path()} build of {self.name} needs it",
                             hint=hint)

    # --- before bootstrap: our packages --------------------------------------------

    def kernel_rpms(self, kernel_packages: list[Path], release: str) -> list[Path]:
        """Our kernel RPM for ``release`` (builder.tools.kpkg makes no kernel-headers)."""
        found = [p for p in kernel_packages if p.name.startswith(f"kernel-{rpm_version(release)}-")]
        if not found:
            raise UserError(f"no kernel-{rpm_version(release)} RPM among {', '.join(p.name for p in kernel_packages)}",
                            hint="rebuild it: isobuild kernel --force")
        return found[:1]

    def prepare(self, kernel_packages: list[Path], release: str, log_path: Path) -> None:
        """Check the host and the kickstart (afresh), then put our kernel RPM in the local repository
        the install takes it from."""
        self.check_host()
        self.kickstart = self._kickstart(afresh=True)
        dnf.make_repo(self.local_repo, self.kernel_rpms(kernel_packages, release), log_path)

    # --- bootstrap: the kickstart's packages into the root ------------------------

    def probe_repositories(self) -> None:
        for repo in self.repos()[:-1]:
            dnf.probe(repo, self.settings.release, ARCH, self.where)

    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None:
        self.probe_repositories()
        try:
            if self.build_path() == "mock":
                self.bootstrap_mock(root, log_path)
            else:
                root.mkdir(parents=True, exist_ok=True)
                dnf.install(root, self.repos(), self.settings.release, self.kickstart.packages, self.work / "dnf",
                            cache, log_path, self.where, exclude=self.kickstart.excluded)
        finally:  # installed or not, the copy of our RPMs and dnf's scratch are not needed any more
            shutil.rmtree(self.local_repo, ignore_errors=True)
            shutil.rmtree(self.work / "dnf", ignore_errors=True)
        if not (root / dnf.DBPATH.lstrip("/") / "rpmdb.sqlite").exists():
            raise InfraError(f"the {self.build_path()} install left no rpm database in {root}{dnf.DBPATH}",
                             hint="dnf: the host's rpm ignored %_dbpath from the private HOME; see the log",
                             details=[f"log: {log_path}"])

    # --- build: mock ------------------------------------------------------------------

    def iso_name(self) -> str:
        return f"{self.settings.name}.iso"

    def mock_argv(self, *args: str) -> list[str]:
        return ["mock", "-r", self.settings.mock.config, f"--uniqueext=isobuild-{self.name}", *args]

    def lmc_argv(self) -> list[str]:
        s = self.settings
        return ["livemedia-creator", "--no-virt", "--make-iso", "--iso-only", f"--ks={MOCK_KICKSTART}",
                f"--resultdir={MOCK_RESULT}", f"--logfile={MOCK_LOGS}/livemedia-creator.log",
                f"--project={s.mock.project}", f"--releasever={s.release}", f"--volid={s.label}",
                f"--iso-name={self.iso_name()}", f"--title=isobuild {self.name} live", "--nomacboot"]

    def mock_commands(self, ks_file: Path, iso_out: Path) -> list[list[str]]:
        """What the mock path runs, in order: a fresh chroot with livemedia-creator, our kickstart and
        repository copied in, the install (simple isolation: anaconda runs as in a plain chroot, with
        the network; its loop devices come from the mock configuration, see the README), the ISO
        copied out."""
        return [
            self.mock_argv("--init"),
            self.mock_argv("--install", *self.settings.mock.packages),
            self.mock_argv("--copyin", str(ks_file), MOCK_KICKSTART),
            self.mock_argv("--copyin", str(self.local_repo), MOCK_REPO),
            self.mock_argv("--isolation=simple", "--enable-network", "--chroot", "--", *self.lmc_argv()),
            self.mock_argv("--copyout", f"{MOCK_RESULT}/{self.iso_name()}", str(iso_out)),
        ]

    def bootstrap_mock(self, root: Path, log_path: Path) -> None:
        scratch = self.work / "mock"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            ks_file = scratch / f"{self.name}.ks"
            ks_file.write_text(self.kickstart.text)
            iso_out = scratch / self.iso_name()
            for argv in self.mock_commands(ks_file, iso_out):
                runner.run(argv, log_path=log_path)
            root_from_live_iso(iso_out, root, scratch, log_path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # --- kernel, initramfs --------------------------------------------------------

    def install_packages(self, root: Path, packages: list[Path], hold: bool, log_path: Path) -> None:
        """With the root's package manager: dnf, from a repository of ``packages`` that wins over the
        distribution's (which still provide what they depend on)."""
        repo = dnf.make_repo(self.work / "packages-repo", packages, log_path)
        fields = [dnf.name_nevra(p, root) for p in packages]
        names = [name for name, _ in fields]
        ours = dnf.Repo("isobuild-packages", baseurl=f"file://{repo}", gpgcheck=False, priority=1)
        try:
            # by full name-version-release.arch: 'dnf install glibc' would leave an installed glibc as it is
            dnf.install(root, [*self.repos()[:-1], ours], self.settings.release, [nevra for _, nevra in fields],
                        self.work / "dnf",
                        self.project.work_dir / "cache" / self.family / f"el{self.settings.release}", log_path,
                        self.where)
        finally:
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(self.work / "dnf", ignore_errors=True)
        if hold:
            dnf.hold(root, names)

    def install_glibc(self, root: Path, glibc_dir: Path, meta: dict[str, Any], log_path: Path) -> None:
        """Replace the root's glibc packages (glibc, glibc-common, its langpacks, ...: the ones it has)
        with ours from the glibc-rpm stage, and hold them -- never a downgrade."""
        installed = {row["package"]: row["version"] for row in dnf.query(root)}
        ours = str(meta["version"])
        if "glibc" in installed and glibcrpm.vercmp(installed["glibc"], ours) > 0:
            raise UserError(f"the repositories moved on: glibc {installed['glibc']} in the {self.name} root is newer "
                            f"than ours {ours}", hint=f"rebuild it from their newest source RPM: isobuild {self.name} "
                            "--force-glibc")
        if not any(r.get("package") == "glibc" for r in meta.get("rpms", [])):
            raise UserError(f"{glibc_dir}/rpms: no glibc package to install in the {self.name} root",
                            hint=f"rebuild it: isobuild {self.name} --force-glibc")
        # glibc itself, and of the rest the ones the root has: it stays what its packages asked for
        self.install_packages(root, glibcrpm.rpms_for(meta, glibc_dir, {*installed, "glibc"}), True, log_path)

    def install_kernel(self, root: Path, kernel_packages: list[Path], release: str, log_path: Path,
                       epoch: int) -> None:
        """Our kernel came with the kickstart's %packages; check it is ours, hold it, make its initramfs."""
        ours = f"{rpm_version(release)}-"
        kernels = [f"{r['package']}-{r['version']}" for r in dnf.query(root) if r["package"] in KERNEL_NAMES]
        if [k for k in kernels if k.startswith(f"kernel-{ours}")] != kernels or not kernels:
            raise InfraError(f"the {self.name} root should hold our kernel {rpm_version(release)} alone; it has: "
                             f"{', '.join(kernels) or 'none'}", hint="does a repository or %packages bring "
                             "another kernel? see the log", details=[f"log: {log_path}"])
        dnf.hold(root, KERNEL_NAMES)
        modules = f"/lib/modules/{release}"
        if Root(root).exists(modules) and not Root(root).exists(f"{modules}/modules.dep"):
            # our RPM carries the index modules_install made; a kernel RPM without one: the root's depmod
            Chroot(root, log_path).run(["depmod", "-a", release])
        self.make_initramfs(root, release, log_path, epoch)

    def dracut_argv(self, release: str) -> list[str]:
        # --no-hostonly: dmsquash-live refuses host-only images; --reproducible: fixed timestamps
        return ["dracut", "--force", "--no-hostonly", "--reproducible", "--add", "dmsquash-live",
                f"/boot/initramfs-{release}.img", release]

    def make_initramfs(self, root: Path, release: str, log_path: Path, epoch: int) -> None:
        # --reproducible takes its times from SOURCE_DATE_EPOCH (the kernel's)
        Chroot(root, log_path, env={"SOURCE_DATE_EPOCH": str(epoch)}).run(self.dracut_argv(release))
        _, initrd = self.boot_files(root, release)
        if not Root(root).exists(initrd):
            raise InfraError(f"dracut made no initramfs ({initrd})", hint="is dracut-live in %packages? see the log",
                             details=[f"log: {log_path}"])

    # --- configuration --------------------------------------------------------------

    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None:
        """Written from outside through builder.tools.rootdir (nothing mounted in the root meanwhile); then
        the kickstart's %post sections in the root (the dnf path; anaconda runs them on the mock
        path) and the SELinux labels."""
        s = self.settings
        r = Root(root)
        self.write_identity(r, s.hostname)
        r.write_text("/etc/fstab", "# live system: dracut's dmsquash-live mounts the root\n")
        r.write_text("/etc/locale.conf", f"LANG={s.locale}\n")
        if s.timezone not in ("Etc/UTC", "UTC") and not r.exists(f"/usr/share/zoneinfo/{s.timezone}"):
            raise UserError(f"{self.where}: timezone: {s.timezone!r} is not a zoneinfo name in the root")
        r.symlink("/etc/localtime", f"../usr/share/zoneinfo/{s.timezone}")
        self.lock_root_account(root, log_path)
        self.apply_overlay(r)
        self.install_smoke_check(r, smoke_script)
        if self.build_path() == "dnf":
            self.run_post_scripts(root, log_path)
        self.relabel(root, log_path)

    def run_post_scripts(self, root: Path, log_path: Path) -> None:
        """The kickstart's %post sections, in order, inside the root -- as anaconda runs them (a
        failure stops the build only with --erroronfail)."""
        r = Root(root)
        for number, script in enumerate(self.kickstart.chroot_posts(), 1):
            inside = f"/tmp/isobuild-ks-post-{number}"
            r.write_text(inside, script.body, 0o700)
            try:
                with log.stage("rootfs.ks-post", line=script.line, interpreter=script.interpreter):
                    result = Chroot(root, log_path).run([script.interpreter, inside], check=False)
            finally:
                r.remove(inside)
            if result.returncode != 0:
                if script.error_on_fail:
                    raise UserError(f"kickstart {self.settings.kickstart}: {script.describe()} failed "
                                    f"(exit {result.returncode}) with --erroronfail", hint=f"see {log_path}")
                log.get().warning("rootfs.ks-post.failed", line=script.line, exit=result.returncode, log=str(log_path))

    def relabel(self, root: Path, log_path: Path) -> None:
        """SELinux labels, as livemedia-creator sets them: files written by a host without SELinux
        have none, and an enforcing EL system would not boot."""
        contexts = "/etc/selinux/targeted/contexts/files/file_contexts"
        r = Root(root)
        if r.exists("/usr/sbin/setfiles") and r.exists(contexts):
            Chroot(root, log_path).run(["setfiles", "-F", "-e", "/proc", "-e", "/sys", "-e", "/dev", contexts, "/"])

    def boot_files(self, root: Path, release: str) -> tuple[str, str]:
        return f"/boot/vmlinuz-{release}", f"/boot/initramfs-{release}.img"

    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]:
        return dnf.query(root)

    def cleanup(self, root: Path, log_path: Path) -> None:
        self.remove_volatile(Root(root), [
            "/var/cache/dnf/*", "/var/lib/dnf/history*", "/var/log/dnf*", "/var/log/hawkey.log",
            "/var/log/anaconda", "/var/lib/rpm/__db*", "/var/lib/systemd/random-seed", "/etc/ssh/ssh_host_*",
            "/tmp/*", "/var/tmp/*", "/root/.bash_history", "/var/cache/ldconfig/aux-cache"])

    def layout(self) -> LiveLayout:
        s = self.settings
        return LiveLayout("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img", "LiveOS/squashfs.img",
                          f"root=live:CDLABEL={s.label} rd.live.image {s.cmdline}".strip(), s.label)


def root_from_live_iso(iso_path: Path, root: Path, scratch: Path, log_path: Path) -> None:
    """Unpack the root filesystem of a livemedia-creator ISO into ``root``.

    Its ``LiveOS/squashfs.img`` holds either the root itself or (lorax's default) an ext4 image
    ``LiveOS/rootfs.img``, which is mounted read-only and copied with every attribute (SELinux
    labels included).
    """
    import pycdlib  # heavy: only the mock path reads livemedia-creator's ISO

    squash = scratch / "squashfs.img"
    reader = pycdlib.PyCdlib()
    reader.open(str(iso_path))
    try:
        reader.get_file_from_iso(str(squash), rr_path="/LiveOS/squashfs.img")
    except pycdlib.pycdlibexception.PyCdlibInvalidInput as exc:
        raise InfraError(f"{iso_path}: no LiveOS/squashfs.img in livemedia-creator's ISO ({exc})") from None
    finally:
        reader.close()
    unpacked = scratch / "squashfs"
    runner.run(["unsquashfs", "-no-progress", "-d", str(unpacked), str(squash)], log_path=log_path)
    squash.unlink()
    image = unpacked / "LiveOS" / "rootfs.img"
    if not image.exists():
        os.replace(unpacked, root)
        return
    mnt = scratch / "rootfs"
    mnt.mkdir()
    runner.run(["mount", "-o", "loop,ro", str(image), str(mnt)], log_path=log_path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        runner.run(["cp", "-a", f"{mnt}/.", str(root)], log_path=log_path)
    finally:
        runner.run(["umount", str(mnt)], log_path=log_path, check=False)
