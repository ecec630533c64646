"""Distribution plugins: what every distro implements for a live ISO.

A plugin turns settings (``distros/<name>.yaml``) and the kernel artifact
into a root filesystem and says how it boots live.  The rootfs, ISO and
smoke stages are distro-neutral and only talk to this interface, so Debian
and the EL family are one module each (``builder/distros/``), and AlmaLinux
and Rocky are data.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from builder.infra import paths
from builder.infra.arch import ARCHES, Arch
from builder.infra.config import Project
from builder.infra.errors import InfraError, UserError
from builder.infra.schema import at_least, matches, setting
from builder.stages.guesttests import TestsRoot
from builder.stages.iso import LiveLayout
from builder.stages.kpackage import Kind
from builder.tools import rootdir
from builder.tools.chroot import Chroot

# Value checks every distro's settings share (see builder.infra.schema.setting).
LABEL = matches(r"[A-Z0-9_]{1,16}", "1 to 16 of A-Z 0-9 _ (an ISO volume label; Joliet holds 16)")
HOSTNAME = matches(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", "a hostname label")
LOCALE = matches(r"[A-Za-z0-9_.@-]+", "a locale name")
ZONEINFO = matches(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", "a zoneinfo name such as Europe/Berlin")
# What a kernel command line may hold: printable ASCII, no quotes or backslashes (ISOLINUX cannot
# quote, GRUB would need escaping), within every arch's COMMAND_LINE_SIZE once isobuild adds its own.
_CMDLINE = re.compile(r"[A-Za-z0-9 ,./:=_+@%^~-]{1,1024}")


def cmdline(value: Any) -> str | None:
    text = str(value)
    if not _CMDLINE.fullmatch(text):
        bad = sorted({c for c in text if not re.fullmatch(r"[A-Za-z0-9 ,./:=_+@%^~-]", c)})
        return ("must be 1 to 1024 characters" if not text or len(text) > 1024
                else f"may not contain {', '.join(repr(c) for c in bad)}") + \
            " (a kernel command line: letters, digits, spaces and , . / : = _ + @ % ^ ~ -)"
    return None


@dataclass
class SquashfsSettings:
    compression: Literal["zstd", "xz", "gzip", "lz4", "lzo"] = setting("zstd", help="mksquashfs -comp")
    level: int | None = setting(None, help="compression level (zstd 1-22, gzip 1-9); none: 9 for zstd "
                                "(6x faster than mksquashfs's 15 for 6% more bytes), the tool's default otherwise",
                                check=at_least(1))


@dataclass
class LiveSettings:
    """What every distro's live system is configured with (each family adds its own keys)."""

    hostname: str = setting("isobuild", help="hostname of the live system", check=HOSTNAME)
    timezone: str = setting("Etc/UTC", help="zoneinfo name", check=ZONEINFO)
    squashfs: SquashfsSettings = setting(factory=SquashfsSettings, help="root filesystem image")
    overlay: str | None = setting(None, help="directory copied over the root after configuration "
                                  "(in the project; vetted: no links out, nothing under dev/ proc/ sys/ run/)")


def smoke_unit_paths() -> tuple[str, str, str]:
    """Where the boot check lives in every image: script, unit, its multi-user.target.wants link."""
    return ("/usr/local/sbin/isobuild-smoke", "/etc/systemd/system/isobuild-smoke.service",
            "/etc/systemd/system/multi-user.target.wants/isobuild-smoke.service")

# The unit that runs the boot check (rootfs.smoke_script) in every distro's image.
SMOKE_UNIT = """[Unit]
Description=isobuild boot check (runs only under isobuild's QEMU smoke test)
ConditionPathExists=/sys/firmware/qemu_fw_cfg/by_name/opt/isobuild/smoke/raw
After=multi-user.target

[Service]
# exec, not oneshot: the script waits for the boot to finish, which a oneshot
# start job would itself hold up.
Type=exec
ExecStart=/usr/local/sbin/isobuild-smoke

[Install]
WantedBy=multi-user.target
"""


# Where the kernel cannot have a fw_cfg sysfs (riscv64 in 6.1), QEMU adds a drive with this serial
# instead (builder.tools.bootmedia); udev names it by it.  Either condition starts the check.
SMOKE_DRIVE_LINK = "/dev/disk/by-id/virtio-isobuild-smoke"


def smoke_unit(arch: Arch) -> str:
    """The boot check's unit for ``arch``: the fw_cfg condition, or (smoke channel "drive") either."""
    if arch.smoke_channel == "fw_cfg":
        return SMOKE_UNIT
    fw_cfg = "ConditionPathExists=/sys/firmware/qemu_fw_cfg/by_name/opt/isobuild/smoke/raw\n"
    return SMOKE_UNIT.replace(fw_cfg, f"ConditionPathExists=|{fw_cfg[len('ConditionPathExists='):]}"
                                      f"ConditionPathExists=|{SMOKE_DRIVE_LINK}\n")


class Plugin(ABC):
    family: ClassVar[str]
    # which package of the kernel this distro installs (builder.stages.kpackage)
    kernel_package: ClassVar[Kind] = "deb-image"
    # whether the bootstrap itself installs the kernel (EL: with the kickstart's %packages), so no
    # part of the root can be kept apart from it
    kernel_in_bootstrap: ClassVar[bool] = False
    # the package format of the glibc stage's output this plugin installs; None: the
    # distribution's own glibc stays (the glibc stage is not run for it)
    glibc_format: ClassVar[str | None] = None
    # the kernel's package of uapi headers the guest tests' build root takes (builder.stages.kpackage)
    tests_headers: ClassVar[Kind] = "deb-libc-dev"

    def __init__(self, name: str, settings: Any, project: Project, origin: str | None = None):
        self.name = name
        self.settings = settings
        self.project = project
        self.origin = origin or name  # the distros/<origin>.yaml this plugin was loaded from

    def for_vm(self, packages: list[str]) -> Plugin:
        """This distro's root as a build VM's (builder.stages.image): ``packages`` added, planned
        under its own name (``<name>.vm``) so its root, layer and records never replace the live
        ISO's; no project's key is in it (the image stage lets that in), so every project shares
        it.  Families that cannot make one say why."""
        raise UserError(f"{self.where}: disk images are made for Debian-family distros only "
                        f"({self.name} is {self.family})",
                        hint="EL images need an EL build host's dnf repositories for the VM packages; "
                             "use a Debian-family distro")

    def arches(self) -> list[str]:
        """The architectures this distro is built for (its settings' ``arches``)."""
        return list(getattr(self.settings, "arches", ["x86_64"]))

    def glibc_target(self) -> Any:
        """The suite a glibc stage builds this distro's glibc packages for (Debian family), or None."""
        return None

    def tests_root(self) -> TestsRoot:
        """The build root the guest tests compile in (builder.stages.guesttests): the image's own
        distribution and arch with its compiler.  Families that have none say why."""
        raise UserError(f"{self.where}: isobuild cannot build guest tests for {self.family} images",
                        hint="set smoke.guest_tests: null")

    def takes_glibc(self) -> bool:
        """Whether this distro's root gets the patched glibc (the project's glibc.enabled aside)."""
        return self.glibc_format is not None

    @property
    def where(self) -> str:
        return f"distros/{self.origin}.yaml"

    def overlay(self) -> rootdir.Vetted | None:
        """The settings' ``overlay:`` directory, inside the project and vetted entry by entry
        (builder.tools.rootdir.vet_overlay), or None."""
        overlay = getattr(self.settings, "overlay", None)
        if not overlay:
            return None
        path = paths.project_input(self.project.root, overlay, "overlay", self.where, "dir")
        return rootdir.vet_overlay(path, self.where)

    def overlay_digest(self) -> str | None:
        """sha256 over the vetted overlay's names, modes, link targets and bytes (for the stage key)."""
        vetted = self.overlay()
        if vetted is None:
            return None
        h = hashlib.sha256()
        for rel, st in vetted.entries:
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(vetted.source / rel).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update((vetted.source / rel).read_bytes())
        return h.hexdigest()

    def check(self) -> None:
        """Everything about this distro's settings the schema cannot see, in seconds, before any
        build: overlay contents, mirrors and repositories, host tools.  Default: the overlay."""
        self.overlay()

    # --- configuration every distro shares ----------------------------------------------

    def write_identity(self, root: rootdir.Root, hostname: str) -> None:
        root.write_text("/etc/hostname", hostname + "\n")

    def lock_root_account(self, root: Path, log_path: Path) -> None:
        """No built-in password: root's account is locked -- by the root's own usermod when it has one
        (it keeps /etc/shadow's owner, which a rewrite from outside cannot as an ordinary user),
        else by rewriting the password field through builder.tools.rootdir."""
        r = rootdir.Root(root)
        if r.exists("/usr/sbin/usermod") or r.exists("/sbin/usermod"):
            Chroot(root, log_path).run(["usermod", "--password", "!", "root"])
            return
        if not r.exists("/etc/shadow"):
            raise InfraError(f"the {self.name} root has no /etc/shadow (and no usermod)",
                             hint="is the package that makes the accounts (passwd, setup) in the packages?")
        lines = r.read_text("/etc/shadow").splitlines()
        for i, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == "root" and len(fields) > 1:
                fields[1] = "!"
                lines[i] = ":".join(fields)
        st = r.resolve("/etc/shadow").stat()
        r.write_bytes("/etc/shadow", ("\n".join(lines) + "\n").encode(), stat.S_IMODE(st.st_mode), st.st_uid,
                      st.st_gid)

    def apply_overlay(self, root: rootdir.Root) -> None:
        vetted = self.overlay()
        if vetted is not None:
            root.copy_overlay(vetted)

    def install_smoke_check(self, root: rootdir.Root, smoke_script: str) -> None:
        """The boot-check script and its unit, enabled (what 'systemctl enable' does for WantedBy=)."""
        script, unit, wants = smoke_unit_paths()
        root.write_text(script, smoke_script, 0o755)
        root.write_text(unit, smoke_unit(ARCHES[self.project.settings.arch]))
        root.symlink(wants, unit)

    def remove_volatile(self, root: rootdir.Root, patterns: list[str], keep: tuple[str, ...] = ()) -> None:
        """Remove what differs between builds (caches, logs, ids), resolved inside the root; an empty
        machine-id makes systemd create a fresh one on every live boot."""
        for pattern in patterns:
            for path in root.glob(pattern):
                if path.rsplit("/", 1)[-1] not in keep:
                    root.remove(path)
        root.write_text("/etc/machine-id", "")

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything about this distro's settings that changes the rootfs (for the stage key)."""

    def prepare(self, kernel_packages: list[Path], release: str, log_path: Path) -> None:
        """Before bootstrap: check the host and stage the kernel's packages where the bootstrap
        installs from, for plugins that install the kernel with everything else in one transaction
        (EL: a local repository for the kickstart).  Default: nothing."""
        return None

    @abstractmethod
    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None:
        """Create a minimal root filesystem with the configured packages in ``root``."""

    @abstractmethod
    def install_packages(self, root: Path, packages: list[Path], hold: bool, log_path: Path) -> None:
        """Install locally built packages (our kernel, our glibc) together with the distro's
        package manager, and hold them so the image stays consistent with it."""

    def install_glibc(self, root: Path, glibc_dir: Path, meta: dict[str, Any], log_path: Path) -> None:
        """Replace the root's glibc packages with the glibc stage's (``glibc_dir``, described by
        ``meta``) -- never a downgrade.  Only called when ``glibc_format`` is set."""
        raise NotImplementedError(f"the {self.family} plugin takes no glibc packages (glibc_format is None)")

    def install_local(self, root: Path, log_path: Path) -> None:
        """Install the packages ``isobuild pkg build`` made that the settings list.  Default: none."""
        return None

    @abstractmethod
    def install_kernel(self, root: Path, kernel_packages: list[Path], release: str, log_path: Path,
                       epoch: int) -> None:
        """Install the built kernel (its ``kernel_package`` kind of packages) so the initramfs is made for it."""

    @abstractmethod
    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None:
        """Hostname, fstab, accounts, locale, timezone, the boot-check unit."""

    @abstractmethod
    def boot_files(self, root: Path, release: str) -> tuple[str, str]:
        """(kernel image, initramfs) for ``release``: absolute paths inside the root."""

    @abstractmethod
    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]:
        """Every installed package with its version."""

    @abstractmethod
    def cleanup(self, root: Path, log_path: Path) -> None:
        """Remove what differs between builds and is not needed live (caches, logs, ids)."""

    @abstractmethod
    def layout(self) -> LiveLayout:
        """The live layout and kernel command line."""
