"""Project settings: ``isobuild.yaml`` at the project root.

The dataclasses below are the schema (see builder.infra.schema).  ``Project`` adds
the resolved paths every stage uses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from builder.infra import paths
from builder.infra.arch import ARCHES
from builder.infra.digests import DigestCache
from builder.infra.errors import UserError
from builder.infra.schema import at_least, load_file, matches, setting

SHA256 = matches(r"[0-9a-f]{64}", "64 lowercase hex digits (a sha256)")
PROFILE_NAME = r"[A-Za-z0-9_-]{1,64}"


def regex(value: Any) -> str | None:
    """A setting that is a regular expression: it must compile."""
    try:
        re.compile(str(value))
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def arch_suites(value: Any) -> str | None:
    """kernel.boot.busybox_suites, a distro's suites: arch names (of builder.infra.arch) to Debian suite names."""
    for arch, suite in dict(value).items():
        if arch not in ARCHES:
            return f"has an unknown architecture {arch!r} (known: {', '.join(ARCHES)})"
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,31}", suite):
            return f"{arch}: {suite!r} is not a Debian suite name"
    return None


def arch_names(value: Any) -> str | None:
    """A list of arch names (of builder.infra.arch), at least one, each once."""
    names = list(value)
    unknown = [a for a in names if a not in ARCHES]
    if unknown:
        return f"has an unknown architecture {unknown[0]!r} (known: {', '.join(ARCHES)})"
    if not names or len(set(names)) != len(names):
        return "must name at least one architecture, each once"
    return None


def check_profile_name(name: str, where: str = "--profile") -> str:
    """A kernel profile name (a file under profiles/kernel/, never a path)."""
    if not re.fullmatch(PROFILE_NAME, name):
        raise UserError(f"{where}: {name!r} is not a profile name",
                        hint="a profile is profiles/kernel/<name>.yaml: give the name (A-Z a-z 0-9 _ -), not a path")
    return name


@dataclass
class SourceSettings:
    type: Literal["debian", "tarball", "git"] = setting(
        "debian", help="debian: Debian's linux-source package; tarball: a local file pinned by sha256; "
        "git: a repository and ref")
    package: str = setting("linux-source-6.1", help="debian: the package that ships /usr/src/<package>.tar.*",
                           check=matches(r"[a-z0-9][a-z0-9.+-]+", "a Debian package name"))
    path: str | None = setting(None, help="tarball: path to the .tar.* file (relative to the project)")
    sha256: str | None = setting(None, help="tarball: its sha256; a mismatch refuses to build", check=SHA256)
    url: str | None = setting(None, help="git: repository URL or path")
    ref: str | None = setting(None, help="git: branch, tag or commit to build")

    def validate(self) -> str | None:
        if self.type == "tarball" and not (self.path and self.sha256):
            return "type 'tarball' needs both 'path' and 'sha256'"
        if self.type == "git" and not (self.url and self.ref):
            return "type 'git' needs both 'url' and 'ref'"
        return None


@dataclass
class GlibcSourceSettings(SourceSettings):
    package: str = setting("glibc-source", help="debian: the package that ships /usr/src/glibc/ (the upstream "
                           "tarball with Debian's series applied, and debian/)",
                           check=matches(r"[a-z0-9][a-z0-9.+-]+", "a Debian package name"))
    debian_dir: str | None = setting(None, help="tarball/git: the Debian packaging (a debian/ directory) to build "
                                     "with; default: the glibc-source package's /usr/src/glibc/debian")


@dataclass
class GlibcSettings:
    enabled: bool = setting(True, help="build the patched glibc and install it in the Debian ISO "
                            "(false: the ISO keeps the distribution's glibc)")
    source: GlibcSourceSettings = setting(factory=GlibcSourceSettings, help="where the glibc source comes from")
    patches: str = setting("patches/glibc", help="directory with the quilt 'series' applied after Debian's own")
    packaging_patches: str | None = setting(
        "patches/glibc-debian", help="directory with a 'series' of patches to Debian's packaging (paths start "
        "with debian/), applied before the build; the default one defines the pkg.glibc.nolocalesall profile")
    suffix: str = setting("+isobuild1", help="appended to the distribution's version (must sort higher: '+...')",
                          check=matches(r"[+~][A-Za-z0-9.+~]{1,32}", "'+' or '~' then up to 32 of A-Z a-z 0-9 . + ~"))
    profiles: list[str] = setting(factory=lambda: ["nobiarch", "noudeb", "pkg.glibc.nolocalesall"],
                                  help="DEB_BUILD_PROFILES: skip the 32-bit/x32 libraries, the installer udeb and "
                                  "locales-all (two thirds of the build; no live ISO installs it)")
    options: list[str] = setting(factory=lambda: ["nocheck", "noautodbgsym"],
                                 help="DEB_BUILD_OPTIONS besides parallel=N: skip the test suite and debug packages")
    install_build_deps: bool = setting(True, help="apt-get build-dep what dpkg-checkbuilddeps finds missing "
                                       "(false: fail naming it)")
    allow_downgrade: bool = setting(False, help="install our glibc even where it sorts below the distribution's "
                                    "libc6 (when the mirror serves no source for the newest; dpkg downgrades it)")
    tests: list[str] = setting(factory=list, help="glibc tests to run after the build, e.g. string/test-strlen "
                               "(isobuild glibc --tests adds more)")
    marker: str = setting("XSC extensions:", help="text the patched libc.so.6 prints when run as a program; "
                          "the boot check looks for it in the booted system",
                          check=matches(r"[^'\\\n]{1,80}", "1 to 80 characters without quotes or backslashes"))


@dataclass
class BootSettings:
    marker_file: str = setting("/sys/kernel/xsc/version",
                               help="file the booted patched kernel exposes; its content is the marker",
                               check=matches(r"/[A-Za-z0-9_./-]+", "an absolute path"))
    marker_pattern: str = setting(r"\d+\.\d+\.\d+", help="regular expression the marker must match fully",
                                  check=regex)
    timeout: int = setting(300, help="seconds before the boot check gives up", check=at_least(10))
    memory: int = setting(512, help="guest memory in MiB", check=at_least(64))
    busybox_suites: dict[str, str] = setting(
        factory=dict, help="per arch, the Debian suite whose busybox-static a foreign arch's initramfs takes "
        "(default: bookworm; riscv64: trixie, bookworm has none), e.g. {riscv64: trixie}", check=arch_suites)
    mirror: str | None = setting(None, help="archive URI for those packages; default: the host's apt configuration",
                                 check=matches(r"(https?|file)://\S+", "an http(s):// or file:// URI"))


@dataclass
class KernelSettings:
    source: SourceSettings = setting(factory=SourceSettings, help="where the kernel source comes from")
    patches: str = setting("patches/kernel", help="directory with the quilt 'series' and its patches")
    profile: str = setting("default", help="config profile: profiles/kernel/<name>.yaml",
                           check=matches(PROFILE_NAME, "a profile name"))
    fragments: list[str] = setting(factory=lambda: ["patches/kernel/xsc.config"],
                                   help="extra config fragments merged after the profile's")
    localversion: str = setting("-isobuild", help="pinned LOCALVERSION appended to the kernel release",
                                check=matches(r"[-+._a-z0-9]{0,32}", "up to 32 of a-z 0-9 - + . _"))
    boot: BootSettings = setting(factory=BootSettings, help="the QEMU boot check")


@dataclass
class SmokeSettings:
    timeout: int = setting(300, help="seconds per boot before it counts as hung", check=at_least(10))
    memory: int = setting(1536, help="guest memory in MiB (systemd wants about 1.5 GiB)", check=at_least(256))
    parallel: int = setting(0, help="boots at once; 0: chosen from the host's CPUs (builder.stages.smoke.boot_plan)",
                            check=at_least(0))
    cpus: int = setting(0, help="virtual CPUs per guest; 0: chosen with parallel", check=at_least(0))
    guest_tests: str | None = setting("tests/guest", help="the project's guest tests (NAME.c, NAME.sh), run in every "
                                      "booted image from a second drive; null: none")
    test_timeout: int = setting(60, help="seconds a guest test may run before it counts as hung", check=at_least(1))


SIZE = matches(r"[1-9][0-9]{0,5}[MG]", "a size such as 8G or 4096M")


def size_bytes(text: str) -> int:
    """``8G``/``4096M`` (vm.image_size, vm.disk) in bytes."""
    return int(text[:-1]) << (30 if text.endswith("G") else 20)


@dataclass
class VmSettings:
    """Build VMs: the disk image (``isobuild image``) and the machines made from it (``isobuild vm``).
    The per-VM resources have environment overrides (ISOBUILD_VM_CPUS, _MEMORY, _DISK, _BASE_PORT)."""

    image_size: str = setting("8G", help="virtual size of the disk image (qcow2: only what is written takes "
                              "space)", check=SIZE)
    packages: list[str] = setting(factory=lambda: ["openssh-server", "build-essential", "devscripts", "fakeroot",
                                                   "equivs", "fdisk", "dbus"],
                                  help="added to the distro's packages in the image's root (SSH and what a "
                                  "package build needs; fdisk grows the root into a larger VM disk; dbus lets "
                                  "systemd-logind run, which powers off on the ACPI button vm stop presses)")
    cpus: int = setting(2, help="virtual CPUs per VM (env ISOBUILD_VM_CPUS)", check=at_least(1))
    memory: int = setting(1536, help="MiB per VM (env ISOBUILD_VM_MEMORY)", check=at_least(256))
    disk: str | None = setting(None, help="virtual disk size per VM, at least image_size; the root grows into it "
                               "at boot (env ISOBUILD_VM_DISK; default: image_size)", check=SIZE)
    base_port: int = setting(10022, help="first localhost port tried for a VM's forwarded SSH (env "
                             "ISOBUILD_VM_BASE_PORT)", check=at_least(1024))
    tcg_cache: int = setting(256, help="MiB of translated code QEMU keeps per VM under TCG (-accel tcg,tb-size); 0: "
                             "QEMU's default (1 GiB). Measured on an idle x86_64 VM: 699 MiB resident with the "
                             "default, 463 with 256, 243 with 64, boot time the same", check=at_least(0))
    network: Literal["restricted", "nat"] = setting("restricted", help="restricted: the guest's user-mode network "
                                                    "reaches nothing outside QEMU (SSH comes in through the forwarded "
                                                    "port); nat: the guest may open connections out through the "
                                                    "host (apt from a mirror, say)")
    firmware: Literal["bios", "uefi"] = setting("bios", help="x86_64 VMs: SeaBIOS or OVMF (the image boots with "
                                                "either; arm64 and riscv64 always boot UEFI)")
    ssh_timeout: int = setting(300, help="seconds vm start waits for SSH on x86_64 (scaled by the arch's "
                               "emulation slowdown)", check=at_least(10))
    stop_timeout: int = setting(60, help="seconds vm stop waits for the guest's ACPI poweroff before killing QEMU",
                                check=at_least(1))

    def validate(self) -> str | None:
        if self.base_port > 65000:
            return f"base_port {self.base_port}: at most 65000 (VMs take the ports above it)"
        if self.disk is not None and size_bytes(self.disk) < size_bytes(self.image_size):
            return f"disk {self.disk} is smaller than image_size {self.image_size}"
        return None


@dataclass
class PkgSettings:
    """Native package builds in build VMs (``isobuild pkg``): one fresh VM per source package."""

    list: str = setting("packages.list", help="the package list file (pkg add/remove edit it; pkg build with no "
                        "names builds it)")
    patches: str = setting("patches/pkgs", help="per source package, a quilt series of ours: <patches>/<source>/series "
                           "(applied at fuzz 0 over Debian's own patches)")
    suffix: str = setting("+isobuild1", help="appended to the version of a package our patches changed (must sort "
                          "above the distribution's: start it with '+')", check=matches(r"\+[a-z0-9.+~]{1,32}",
                                                                                        "'+' then a-z 0-9 . + ~"))
    parallel: int = setting(0, help="VMs at once; 0: from the host's CPUs and memory", check=at_least(0))
    cpus: int = setting(2, help="virtual CPUs per build VM", check=at_least(1))
    memory: int = setting(2048, help="MiB per build VM", check=at_least(512))
    disk: str = setting("16G", help="virtual disk per build VM (the root grows into it at boot)", check=SIZE)
    timeout: int = setting(3600, help="seconds a build may take on x86_64 (scaled by the arch's emulation "
                           "slowdown)", check=at_least(60))
    distcc_jobs: int = setting(0, help="compiles at once through distcc per VM; 0: twice the host's CPUs",
                               check=at_least(0))

    def validate(self) -> str | None:
        if self.list.endswith("/") or not self.list:
            return f"list {self.list!r}: a file name"
        return None


@dataclass
class CacheSettings:
    """A stage store shared by machines and CI runners: built artifacts by stage key."""

    store: str | None = setting(None, help="a directory (a mounted volume, the path a CI cache restores) holding "
                                "built stage artifacts by kind and key: a stage whose artifact is missing here is "
                                "pulled from it, verified against the sha256s its entry recorded, before anything "
                                "is built (env ISOBUILD_CACHE_STORE; relative to the project)")
    push: bool = setting(False, help="put what is built here into the store (env ISOBUILD_CACHE_PUSH=1)")


@dataclass
class ReleaseSettings:
    key: str | None = setting(None, help="GnuPG key that signs releases: a fingerprint (best), key id or user id; "
                              "isobuild release --key overrides")
    gnupg_home: str | None = setting(None, help="GnuPG home directory holding that key (relative to the project; "
                                     "default: $GNUPGHOME or ~/.gnupg)")


@dataclass
class Settings:
    work_dir: str = setting("~/.cache/isobuild", help="cache and build trees (env ISOBUILD_WORK_DIR overrides)")
    logs_dir: str = setting("logs", help="per-stage logs and isobuild.jsonl")
    arch: Literal["x86_64", "arm64", "riscv64"] = setting("x86_64", help="target architecture (--arch overrides)")
    jobs: int = setting(0, help="parallel jobs; 0 means one per CPU", check=at_least(0))
    kernel: KernelSettings = setting(factory=KernelSettings, help="the kernel stage")
    glibc: GlibcSettings = setting(factory=GlibcSettings, help="the glibc stage")
    smoke: SmokeSettings = setting(factory=SmokeSettings, help="the ISO boot checks")
    vm: VmSettings = setting(factory=VmSettings, help="build VMs: isobuild image, isobuild vm")
    pkg: PkgSettings = setting(factory=PkgSettings, help="package builds in VMs: isobuild pkg")
    cache: CacheSettings = setting(factory=CacheSettings, help="the shared stage store: isobuild cache")
    release: ReleaseSettings = setting(factory=ReleaseSettings, help="signing: isobuild release")


@dataclass
class Project:
    root: Path
    config_file: Path
    settings: Settings
    work_dir: Path = field(init=False)
    logs_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        env = os.environ.get("ISOBUILD_WORK_DIR")
        work = env or self.settings.work_dir
        self.work_dir = self.path(os.path.expanduser(work))
        self.logs_dir = self.path(os.path.expanduser(self.settings.logs_dir))
        where = self.config_file.name
        paths.check_output_dir(self.work_dir, self.root, "ISOBUILD_WORK_DIR" if env else "work_dir",
                               "environment" if env else where)
        paths.check_output_dir(self.logs_dir, self.root, "logs_dir", where)
        if self.work_dir.resolve() == self.logs_dir.resolve():
            raise UserError(f"{where}: logs_dir and work_dir are the same directory ({self.work_dir})",
                            hint="give the logs a directory of their own")
        self.stage_store()  # a bad store setting stops every verb before it starts

    def stage_store(self) -> tuple[Path, bool] | None:
        """The shared stage store's directory and whether to push into it (None: no store)."""
        env = os.environ.get("ISOBUILD_CACHE_STORE")
        value = self.settings.cache.store if env is None else env  # set and empty: no store, whatever the file says
        if not value:
            return None
        path = self.path(os.path.expanduser(value))
        where = "environment" if env else self.config_file.name
        paths.check_output_dir(path, self.root, "ISOBUILD_CACHE_STORE" if env else "cache.store", where)
        resolved, work = path.resolve(), self.work_dir.resolve()
        if resolved == work or work in resolved.parents or resolved in work.parents:
            raise UserError(f"{where}: the stage store {path} and the work dir {self.work_dir} overlap",
                            hint="give the store a directory of its own, outside the work dir")
        push_env = os.environ.get("ISOBUILD_CACHE_PUSH")
        if push_env not in (None, "", "0", "1"):
            raise UserError(f"environment: ISOBUILD_CACHE_PUSH={push_env!r}: 1 or 0")
        push = push_env == "1" if push_env else self.settings.cache.push
        return path, push

    def with_arch(self, arch: str | None) -> Project:
        """This project for another target arch (``--arch``): the same files and work dir, every
        stage planned for ``arch``.  ``None`` or the configured arch: this project itself."""
        if arch is None or arch == self.settings.arch:
            return self
        return Project(self.root, self.config_file, replace(self.settings, arch=arch))  # type: ignore[arg-type]

    def input_dir(self, value: str, setting: str) -> Path:
        """A project input directory named by a setting (inside the project; see builder.infra.paths)."""
        return paths.project_input(self.root, value, setting, self.config_file.name, "dir")

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.root / p

    @property
    def iso_dir(self) -> Path:
        """Where the ISO stage publishes: iso/<distro>/ (release and report read it)."""
        return self.root / "iso"

    def digests(self) -> DigestCache:
        """The work dir's cache of file digests (remembered by size, mtime and inode)."""
        return DigestCache(self.work_dir / "digests.json")

    @property
    def jobs(self) -> int:
        return self.settings.jobs or os.cpu_count() or 1


def load_project(config_file: Path) -> Project:
    if config_file.is_dir():
        raise UserError(f"{config_file}: is a directory, not a settings file",
                        hint="pass the settings file with -c (default: ./isobuild.yaml)")
    config_file = config_file.resolve() if config_file.exists() else config_file.absolute()
    settings = load_file(Settings, config_file)
    return Project(root=config_file.parent, config_file=config_file, settings=settings)
