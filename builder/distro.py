"""Distribution plugins: what every distro implements for a live ISO.

A plugin turns settings (``distros/<name>.yaml``) and the kernel artifact
into a root filesystem and says how it boots live.  The rootfs, ISO and
smoke stages are distro-neutral and only talk to this interface, so Debian
and the EL family are one module each (``builder/distros/``), and AlmaLinux
and Rocky are data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from builder.config import Project
from builder.errors import UserError
from builder.schema import matches

# Value checks every distro's settings share (see builder.schema.setting).
LABEL = matches(r"[A-Z0-9_]{1,32}", "1 to 32 of A-Z 0-9 _ (an ISO9660 volume label)")
HOSTNAME = matches(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", "a hostname label")
LOCALE = matches(r"[A-Za-z0-9_.@-]+", "a locale name")
ZONEINFO = matches(r"[A-Za-z0-9_+/-]+", "a zoneinfo name")

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


@dataclass(frozen=True)
class LiveLayout:
    """Where the live system's pieces go on the ISO and how it boots."""

    kernel: str  # path inside the ISO, e.g. live/vmlinuz
    initrd: str
    squashfs: str
    cmdline: str
    label: str


class Plugin(ABC):
    family: ClassVar[str]
    # the package format of the glibc stage's output this plugin installs; None: the
    # distribution's own glibc stays (the glibc stage is not run for it)
    glibc_format: ClassVar[str | None] = None

    def __init__(self, name: str, settings: Any, project: Project):
        self.name = name
        self.settings = settings
        self.project = project

    def takes_glibc(self) -> bool:
        """Whether this distro's root gets the patched glibc (the project's glibc.enabled aside)."""
        return self.glibc_format is not None

    def overlay_dir(self) -> Path | None:
        """The settings' ``overlay:`` directory (copied over the root after configuration), if any."""
        overlay = getattr(self.settings, "overlay", None)
        if not overlay:
            return None
        path = self.project.path(overlay)
        if not path.is_dir():
            raise UserError(f"distros/{self.name}.yaml: overlay: {path} is not a directory")
        return path

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything about this distro's settings that changes the rootfs (for the stage key)."""

    def prepare(self, kernel_dir: Path, release: str, log_path: Path) -> None:
        """Before bootstrap: check the host and stage the kernel artifact's packages where the
        bootstrap installs from, for plugins that install the kernel with everything else in one
        transaction (EL: a local repository for the kickstart).  Default: nothing."""
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
        raise UserError(f"the {self.family} plugin has no glibc_format, so it cannot install the glibc stage's "
                        "packages", hint="a bug in isobuild: rootfs.plan must not give it a glibc plan")

    @abstractmethod
    def install_kernel(self, root: Path, kernel_dir: Path, release: str, log_path: Path) -> None:
        """Install the built kernel (its packages in ``kernel_dir``) so the initramfs is made for it."""

    @abstractmethod
    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None:
        """Hostname, fstab, accounts, locale, timezone, the boot-check unit."""

    @abstractmethod
    def boot_files(self, root: Path, release: str) -> tuple[Path, Path]:
        """(kernel image, initramfs) inside ``root`` for ``release``."""

    @abstractmethod
    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]:
        """Every installed package with its version."""

    @abstractmethod
    def cleanup(self, root: Path, log_path: Path) -> None:
        """Remove what differs between builds and is not needed live (caches, logs, ids)."""

    @abstractmethod
    def layout(self) -> LiveLayout:
        """The live layout and kernel command line."""
