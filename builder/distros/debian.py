"""Debian: a live root filesystem for live-boot, from mmdebstrap or debootstrap.

The kernel's linux-image .deb is installed with dpkg inside the root, so
initramfs-tools (with live-boot's hooks) makes the initramfs the way a
Debian system would.  The package cache persists across builds.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder import aptsources, log, runner, stagekey
from builder.chroot import Chroot
from builder.digest import sha256_bytes, sha256_tree
from builder.distro import HOSTNAME, LABEL, LOCALE, SMOKE_UNIT, ZONEINFO, LiveLayout, Plugin
from builder.errors import InfraError, UserError
from builder.schema import at_least, matches, setting

# live-boot settings in the initramfs (see DebianPlugin.initramfs_settings)
INITRAMFS_CONF = "isobuild-live"
_UNREACHABLE = re.compile(r"(Could not resolve|Failed to fetch|Unable to connect|Connection refused|"
                          r"Temporary failure resolving|No route to host|Could not connect|Network is unreachable|"
                          r"Connection timed out|Release file .* is not valid|404\s+Not Found)", re.I)
_UNKNOWN_PACKAGE = re.compile(r"(?:Unable to locate package|Couldn't find package|has no installation candidate"
                              r"|E: Package '([^']+)' has no)\s*(\S*)")


@dataclass
class SquashfsSettings:
    compression: Literal["zstd", "xz", "gzip", "lz4", "lzo"] = setting("zstd", help="mksquashfs -comp")
    level: int | None = setting(None, help="compression level (zstd 1-22, gzip 1-9); none: 9 for zstd "
                                "(6x faster than mksquashfs's 15 for 6% more bytes), the tool's default otherwise",
                                check=at_least(1))


@dataclass
class DebianSettings:
    family: Literal["debian"] = setting("debian", help="plugin family")
    name: str = setting("isobuild-debian", help="ISO file name: iso/debian/<name>.iso",
                        check=matches(r"[A-Za-z0-9._-]{1,64}", "a file name of A-Z a-z 0-9 . _ -"))
    suite: str = setting("bookworm", help="Debian suite", check=matches(r"[a-z][a-z0-9-]+", "a suite name"))
    mirror: str | None = setting(None, help="archive URI; default: the host's apt configuration for the suite",
                                 check=matches(r"(https?|file)://\S+", "an http(s):// or file:// URI"))
    components: list[str] = setting(factory=lambda: ["main"], help="archive components")
    bootstrap: Literal["mmdebstrap", "debootstrap"] = setting(
        "mmdebstrap", help="mmdebstrap (default: measured about 2x faster here) or debootstrap")
    packages: list[str] = setting(factory=lambda: ["systemd-sysv", "live-boot", "initramfs-tools", "zstd"],
                                  help="packages on top of minbase")
    hostname: str = setting("isobuild", help="hostname of the live system",
                            check=HOSTNAME)
    locale: str = setting("C.UTF-8", help="LANG of the live system",
                          check=LOCALE)
    timezone: str = setting("Etc/UTC", help="zoneinfo name", check=ZONEINFO)
    label: str = setting("ISOBUILD_DEBIAN", help="ISO volume label", check=LABEL)
    cmdline: str = setting("boot=live components console=ttyS0,115200 console=tty0",
                           help="kernel command line of the live system")
    squashfs: SquashfsSettings = setting(factory=SquashfsSettings, help="root filesystem image")
    overlay: str | None = setting(None, help="directory copied over the root after configuration "
                                  "(relative to the project; e.g. extra units, config files)")
    ssh_authorized_key: str | None = setting(None, help="public key for root (needs openssh-server in packages)",
                                             check=matches(r"(ssh|ecdsa|sk)-\S+ \S+( .*)?", "an OpenSSH public key"))

    def validate(self) -> str | None:
        pkgs = set(self.packages)
        for name in self.packages:
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+(=\S+)?", name):
                return f"packages: {name!r} is not a Debian package name"
        if self.timezone not in ("Etc/UTC", "UTC") and "tzdata" not in pkgs:
            return f"timezone {self.timezone!r} needs 'tzdata' in packages"
        if self.locale not in ("C", "C.UTF-8", "POSIX") and "locales" not in pkgs:
            return f"locale {self.locale!r} needs 'locales' in packages"
        if self.ssh_authorized_key and "openssh-server" not in pkgs:
            return "ssh_authorized_key needs 'openssh-server' in packages"
        if not {"live-boot", "systemd-sysv"} <= pkgs:
            return "packages must include live-boot and systemd-sysv (the live system boots with them)"
        return None


class DebianPlugin(Plugin):
    family = "debian"
    glibc_format = "deb"
    settings: DebianSettings

    def mirror(self) -> str:
        return self.settings.mirror or aptsources.default_mirror(self.settings.suite)

    def identity(self) -> dict[str, Any]:
        s = self.settings
        overlay = self.overlay_dir()
        return {"family": self.family, "suite": s.suite, "mirror": self.mirror(), "components": s.components,
                "bootstrap": s.bootstrap, "packages": s.packages, "hostname": s.hostname, "locale": s.locale,
                "timezone": s.timezone, "squashfs": [s.squashfs.compression, s.squashfs.level],
                "ssh_authorized_key": s.ssh_authorized_key,
                "overlay": sha256_tree(overlay) if overlay else None}

    # --- bootstrap ------------------------------------------------------------------

    def bootstrap_argv(self, root: Path, cache: Path) -> list[str]:
        s = self.settings
        include = ",".join(s.packages)
        components = ",".join(s.components)
        if s.bootstrap == "debootstrap":
            return ["debootstrap", "--variant=minbase", f"--components={components}", f"--include={include}",
                    f"--cache-dir={cache}", s.suite, str(root), self.mirror()]
        return ["mmdebstrap", "--variant=minbase", f"--components={components}", f"--include={include}",
                '--aptopt=Acquire::Retries "3"',
                # keep the downloaded .debs in the root so they can be copied to the cache afterwards
                "--skip=download/empty",
                "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
                f"--setup-hook=sync-in {cache} /var/cache/apt/archives",
                s.suite, str(root), self.mirror()]

    def mirror_stamp(self) -> str | None:
        """sha256 of the suite's InRelease (or Release) on the mirror: it changes with every
        update of the suite.  None when it cannot be read (the bootstrap then says why)."""
        base = f"{self.mirror().rstrip('/')}/dists/{self.settings.suite}"
        for name in ("InRelease", "Release"):
            try:
                with urllib.request.urlopen(f"{base}/{name}", timeout=15) as response:
                    return sha256_bytes(response.read())
            except (OSError, ValueError):
                continue
        return None

    def bootstrap_key(self, argv: list[str], root: Path, cache: Path) -> str | None:
        """What a bootstrapped root is a function of: the command (paths aside), the tool's
        version and the mirror's state.  None: not cacheable now."""
        stamp = self.mirror_stamp()
        if stamp is None:
            return None
        tool = runner.output([argv[0], "--version"]).strip().splitlines()[0]
        generic = [a.replace(str(root), "<root>").replace(str(cache), "<cache>") for a in argv]
        return stagekey.compute({"argv": generic, "tool": tool, "mirror_release": stamp})

    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None:
        """mmdebstrap/debootstrap, or -- when the same command already ran against the same
        mirror state -- its result unpacked from the root cache (seconds instead of a
        bootstrap: the rootfs is rebuilt whenever the kernel or glibc changes)."""
        cache.mkdir(parents=True, exist_ok=True)
        argv = self.bootstrap_argv(root, cache)
        roots = cache.with_name(cache.name + ".roots")
        key = self.bootstrap_key(argv, root, cache)
        cached = roots / f"{key}.tar" if key else None
        if cached is not None and cached.exists():
            root.mkdir(parents=True)
            with log.stage("rootfs.bootstrap-cached", tar=str(cached)):
                runner.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", cached, "-C", root],
                           log_path=log_path)
            return
        self._bootstrap(argv, root, cache, log_path)
        if cached is not None:
            roots.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.tmp")
            runner.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", tmp, "-C", root, "."],
                       log_path=log_path)
            os.replace(tmp, cached)
            for old in roots.glob("*.tar"):  # one per suite: an older mirror state is never used again
                if old != cached:
                    old.unlink()

    def _bootstrap(self, argv: list[str], root: Path, cache: Path, log_path: Path) -> None:
        for attempt in (1, 2, 3):
            try:
                runner.run(argv, log_path=log_path, env={"DEBIAN_FRONTEND": "noninteractive"})
                break
            except runner.CommandFailed as exc:
                text = "\n".join(exc.error_lines + exc.tail)
                if m := _UNKNOWN_PACKAGE.search(text):
                    pkg = next((g for g in m.groups() if g), "?")
                    raise UserError(f"distros/{self.name}.yaml: package {pkg!r} does not exist in "
                                    f"{self.settings.suite} ({', '.join(self.settings.components)})",
                                    hint="fix 'packages' (apt-cache policy NAME on a Debian host tells)",
                                    details=exc.details) from None
                if _UNREACHABLE.search(text) and attempt < 3:
                    shutil.rmtree(root, ignore_errors=True)
                    continue
                if _UNREACHABLE.search(text):
                    raise InfraError(f"the Debian mirror {self.mirror()} is unreachable (3 attempts)",
                                     hint="check the network, or set 'mirror:' in distros/"
                                          f"{self.name}.yaml", details=exc.details) from None
                raise
        archives = root / "var/cache/apt/archives"
        for deb in archives.glob("*.deb"):
            if not (cache / deb.name).exists():
                shutil.copy2(deb, cache / deb.name)
            deb.unlink()  # in the package cache now; the image never needs them

    # --- kernel, configuration ----------------------------------------------------

    def install_packages(self, root: Path, packages: list[Path], hold: bool, log_path: Path) -> None:
        staged = root / "tmp" / "isobuild-debs"
        staged.mkdir(parents=True, exist_ok=True)
        for deb in packages:
            shutil.copy(deb, staged / deb.name)
        names = [runner.output(["dpkg-deb", "--field", str(deb), "Package"]).strip() for deb in packages]
        with Chroot(root, log_path, env={"DEBIAN_FRONTEND": "noninteractive"}) as chroot:
            # no daemons may start inside the build root
            chroot.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
            try:
                # one dpkg run: a set that depends on itself (libc6, libc-bin, ...) goes in together
                chroot.run(["dpkg", "-i", *(f"/tmp/isobuild-debs/{deb.name}" for deb in packages)])
                if hold:
                    chroot.run(["apt-mark", "hold", *names])
            finally:
                (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
                shutil.rmtree(staged, ignore_errors=True)

    def install_glibc(self, root: Path, glibc_dir: Path, meta: dict[str, Any], log_path: Path) -> None:
        from builder import glibc

        installed = {row["package"]: row["version"] for row in self.manifest(root, log_path)}
        ours = str(meta["version"])
        if "libc6" in installed:
            glibc.check_not_downgrade(
                ours, installed["libc6"], f"libc6 in the {self.name} root (from its mirror):",
                hint="the mirror has a newer glibc than the source isobuild patched: update it "
                     "(apt-get install glibc-source) and run isobuild glibc again")
        debs = glibc.debs_for(meta, glibc_dir, set(installed))
        if not any(d.name.startswith("libc6_") for d in debs):
            raise UserError(f"{glibc_dir}/debs: no libc6 package to install in the {self.name} root",
                            hint="rebuild it: isobuild glibc --force")
        self.install_packages(root, debs, True, log_path)

    def install_kernel(self, root: Path, kernel_dir: Path, release: str, log_path: Path) -> None:
        debs = sorted((kernel_dir / "debs").glob(f"linux-image-{release}_*.deb"))
        if not debs:
            raise UserError(f"{kernel_dir}/debs: no linux-image-{release} package in the kernel artifact",
                            hint="rebuild it: isobuild kernel --force")
        self.initramfs_settings(root)  # the kernel's postinst makes the initramfs: its settings go first
        self.install_packages(root, debs[:1], True, log_path)
        _, initrd = self.boot_files(root, release)
        if not initrd.exists():
            raise InfraError(f"installing {debs[0].name} made no initramfs ({initrd})",
                             hint="is initramfs-tools in the packages? see the log", details=[f"log: {log_path}"])

    def initramfs_settings(self, root: Path) -> None:
        """live-boot's initramfs settings for this root (initramfs-tools sources conf.d at boot).

        Without ifupdown in the image, live-boot's "Preconfiguring networking" only fails
        (it writes /etc/network/interfaces, a directory the root lacks) after a `udevadm
        trigger` + `settle`: 2 s of every boot under TCG, and an error line on the console.
        """
        conf = root / "etc/initramfs-tools/conf.d" / INITRAMFS_CONF
        if (root / "sbin/ifup").exists() or (root / "usr/sbin/ifup").exists():
            conf.unlink(missing_ok=True)
            return
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("# isobuild: no ifupdown in this image, so live-boot has no interfaces file to write\n"
                        "NONETWORKING=true\nexport NONETWORKING\n")

    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None:
        s = self.settings
        (root / "etc/hostname").write_text(s.hostname + "\n")
        (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{s.hostname}\n"
                                        "::1\tlocalhost ip6-localhost ip6-loopback\n")
        (root / "etc/fstab").write_text("# live system: live-boot mounts the root\n")
        (root / "etc/default").mkdir(exist_ok=True)
        (root / "etc/default/locale").write_text(f"LANG={s.locale}\n")
        zone = root / "usr/share/zoneinfo" / s.timezone
        if s.timezone not in ("Etc/UTC", "UTC") and not zone.exists():
            raise UserError(f"distros/{self.name}.yaml: timezone: {s.timezone!r} is not a zoneinfo name")
        localtime = root / "etc/localtime"
        localtime.unlink(missing_ok=True)
        localtime.symlink_to(f"/usr/share/zoneinfo/{s.timezone}")
        (root / "etc/timezone").write_text(s.timezone + "\n")
        with Chroot(root, log_path) as chroot:
            # no built-in password: the root account is locked; access is by SSH key only if configured
            chroot.run(["usermod", "--password", "!", "root"])
            if s.ssh_authorized_key:
                chroot.write("/root/.ssh/authorized_keys", s.ssh_authorized_key.strip() + "\n", 0o600)
                (root / "root/.ssh").chmod(0o700)
                # host keys are removed by cleanup (they must differ per machine): make them at boot
                chroot.write("/etc/systemd/system/ssh.service.d/isobuild-hostkeys.conf",
                             "[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n")
            overlay = self.overlay_dir()
            if overlay:
                runner.run(["cp", "-a", "--no-preserve=ownership", f"{overlay}/.", str(root)], log_path=log_path)
            chroot.write("/usr/local/sbin/isobuild-smoke", smoke_script, 0o755)
            chroot.write("/etc/systemd/system/isobuild-smoke.service", SMOKE_UNIT)
            chroot.run(["systemctl", "enable", "isobuild-smoke.service"])

    def boot_files(self, root: Path, release: str) -> tuple[Path, Path]:
        return root / "boot" / f"vmlinuz-{release}", root / "boot" / f"initrd.img-{release}"

    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]:
        out = runner.output(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                             "-f=${Package}\t${Version}\t${Architecture}\n"])
        rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 2]
        return [{"package": p, "version": v, "arch": a} for p, v, a in sorted(rows)]

    def cleanup(self, root: Path, log_path: Path) -> None:
        patterns = ["var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/log/*.log", "var/log/apt/*",
                    "var/lib/dbus/machine-id", "etc/ssh/ssh_host_*", "tmp/*", "var/tmp/*", "root/.bash_history",
                    "etc/resolv.conf", "var/cache/ldconfig/aux-cache"]
        for pattern in patterns:
            for path in root.glob(pattern):
                if path.name in ("lock", "partial", "auxcache"):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        # an empty machine-id: systemd makes a fresh one on every live boot
        (root / "etc/machine-id").write_text("")

    def layout(self) -> LiveLayout:
        return LiveLayout("live/vmlinuz", "live/initrd.img", "live/filesystem.squashfs", self.settings.cmdline,
                          self.settings.label)
