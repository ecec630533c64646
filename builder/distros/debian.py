"""Debian: a live root filesystem for live-boot, from mmdebstrap or debootstrap.

The kernel's linux-image .deb is installed with dpkg inside the root, so
initramfs-tools (with live-boot's hooks) makes the initramfs the way a
Debian system would.  The package cache persists across builds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from builder.distros.base import LABEL, LOCALE, LiveSettings, Plugin, cmdline
from builder.infra import atomic, digests, hosttools, keys, log, paths, runner, sandbox
from builder.infra.arch import ARCHES, Arch
from builder.infra.config import arch_names, arch_suites
from builder.infra.errors import InfraError, IsobuildError, UserError
from builder.infra.schema import matches, setting
from builder.stages import glibc
from builder.stages.iso import LiveLayout
from builder.tools import aptlock, aptrepo, aptsources, buildroot, chroot, foreign, pkglist
from builder.tools.chroot import Chroot
from builder.tools.rootdir import Root

# live-boot settings in the initramfs (see DebianPlugin.initramfs_settings)
INITRAMFS_CONF = "isobuild-live"
_UNREACHABLE = re.compile(r"(Could not resolve|Failed to fetch|Unable to connect|Connection refused|"
                          r"Temporary failure resolving|No route to host|Could not connect|Network is unreachable|"
                          r"Connection timed out|Release file .* is not valid|404\s+Not Found)", re.I)
# Debian policy 5.6.1 (names) and 5.6.12 (versions): what --include may carry, nothing more
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)*")
_UNKNOWN_PACKAGE = re.compile(r"(?:Unable to locate package|Couldn't find package|has no installation candidate"
                              r"|E: Package '([^']+)' has no)\s*(\S*)")


@dataclass
class DebianSettings(LiveSettings):
    family: Literal["debian"] = setting("debian", help="plugin family")
    name: str = setting("isobuild-debian", help="ISO file name: iso/debian/<name>.iso",
                        check=matches(r"[A-Za-z0-9._-]{1,64}", "a file name of A-Z a-z 0-9 . _ -"))
    suite: str = setting("bookworm", help="Debian suite", check=matches(r"[a-z][a-z0-9-]+", "a suite name"))
    arches: list[str] = setting(factory=lambda: ["x86_64"], help="architectures this distro is built for "
                                "(isobuild isos builds each; --arch picks one)", check=arch_names)
    suites: dict[str, str] = setting(factory=lambda: {"riscv64": "trixie"},
                                     help="per arch, a suite other than 'suite' (bookworm has no riscv64)",
                                     check=arch_suites)
    mirror: str | None = setting(None, help="archive URI; default: the host's apt configuration for the suite",
                                 check=matches(r"(https?|file)://[A-Za-z0-9._~:/?#@!$&*+;=%\[\]-]+",
                                               "an http(s):// or file:// URI"))
    keyring: str | None = setting(None, help="keyring the suite's InRelease must be signed with (a project file; "
                                  "default: Debian's archive keyring)")
    components: list[str] = setting(factory=lambda: ["main"], help="archive components")
    bootstrap: Literal["mmdebstrap", "debootstrap"] = setting(
        "mmdebstrap", help="mmdebstrap (default: measured about 2x faster here) or debootstrap")
    packages: list[str] = setting(factory=lambda: ["systemd-sysv", "live-boot", "initramfs-tools", "zstd"],
                                  help="packages on top of minbase")
    locale: str = setting("C.UTF-8", help="LANG of the live system",
                          check=LOCALE)
    label: str = setting("ISOBUILD_DEBIAN", help="ISO volume label", check=LABEL)
    cmdline: str = setting("boot=live components console=ttyS0,115200 console=tty0",
                           help="kernel command line of the live system (console=ttyS0 means the arch's serial "
                           "console: ttyAMA0 on arm64)", check=cmdline)
    ssh_authorized_key: str | None = setting(None, help="public key for root (needs openssh-server in packages)",
                                             check=matches(r"(ssh|ecdsa|sk)-\S+ \S+( .*)?", "an OpenSSH public key"))
    hooks: list[str] = setting(factory=list, help="scripts of the project run as root inside the root (chrooted, "
                               "no network namespace of their own) after the overlay, in order: what a file cannot "
                               "say (a user, a generated config). Part of the root's key; isobuild rebuild-check "
                               "catches one that writes something different each time")
    local_packages: list[str] = setting(factory=list, help="binary packages isobuild pkg build made for the arch "
                                        "(<work>/pkgs/<arch>/) installed in the root like our kernel and glibc (their "
                                        "dependencies must be in the root already)")

    def validate(self) -> str | None:
        pkgs = {name.split("=", 1)[0] for name in self.packages}
        for entry in self.packages:
            name, eq, version = entry.partition("=")
            if not PACKAGE.fullmatch(name):
                return f"packages: {entry!r} is not a Debian package name (a-z 0-9 + . -, Debian policy 5.6.1)"
            if eq and not VERSION.fullmatch(version):
                return f"packages: {entry!r}: {version!r} is not a Debian version (policy 5.6.12)"
        for component in self.components:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*(/[a-z0-9-]+)?", component):
                return f"components: {component!r} is not an archive component"
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
    glibc_format: ClassVar[str | None] = "deb"
    settings: DebianSettings

    @property
    def arch(self) -> Arch:
        return ARCHES[self.project.settings.arch]

    @property
    def suite(self) -> str:
        """The suite of this build's arch (``suites``, else ``suite``)."""
        return self.settings.suites.get(self.arch.name, self.settings.suite)

    def for_vm(self, packages: list[str]) -> DebianPlugin:
        settings = dataclasses.replace(self.settings, packages=[
            *self.settings.packages, *(p for p in packages if p not in self.settings.packages)])
        return DebianPlugin(f"{self.name}.vm", settings, self.project, origin=self.origin)

    def mirror(self) -> str:
        if self.settings.mirror:
            return self.settings.mirror
        # the host's source for the suite; another suite (trixie for riscv64) from the host's archive
        return aptsources.default_mirror(self.suite) if self.arch.native() and self.suite == self.settings.suite \
            else aptsources.archive_mirror(self.suite)

    def keyring(self) -> Path:
        if self.settings.keyring is None:
            return aptrepo.DEBIAN_KEYRING
        return paths.project_input(self.project.root, self.settings.keyring, "keyring", self.where, "file")

    @functools.cached_property
    def release(self) -> aptrepo.Release:
        """The suite's signed InRelease on the mirror (fetched and checked once per plugin)."""
        return aptrepo.release(self.mirror(), self.suite, self.keyring(), self.where)

    def glibc_target(self) -> glibc.Target:
        return glibc.Target(self.suite, self.mirror(), self.keyring(), lambda: self.release)

    def tests_root(self) -> buildroot.CrossRoot:
        """The suite's buildd root of this arch (another arch's compiler runs through qemu-user)."""
        return buildroot.CrossRoot(self.suite, self.mirror(), self.keyring(), self.arch, self.release,
                                   self.project.work_dir / "cache" / "cross-roots", cross=False)

    def check(self) -> None:
        """The overlay, the bootstrap tool (debootstrap needs root), and the mirror: reachable, its
        InRelease signed by the keyring, the suite holding the components for this architecture."""
        super().check()
        if self.arch.name not in self.settings.arches:
            raise UserError(f"{self.where}: {self.name} is not configured for {self.arch.name} "
                            f"(arches: {', '.join(self.settings.arches)})",
                            hint=f"add {self.arch.name} to 'arches' (and its suite under 'suites' if not "
                                 f"{self.settings.suite})")
        tool = self.settings.bootstrap
        if sandbox.rootless() and tool == "debootstrap":
            raise UserError(f"{self.where}: bootstrap: debootstrap needs root",
                            hint="use bootstrap: mmdebstrap (its unshare mode works as an ordinary user)")
        for name in (tool, "unshare", "gpgv", "mksquashfs"):
            if shutil.which(name) is None:
                raise InfraError(f"{name} not found: the {self.name} build needs it", hint=hosttools.install_hint(name))
        if sandbox.rootless():
            sandbox.idmap()  # subordinate ids and newuidmap, or a clear error now
        aptrepo.require(self.release, self.deb_arch, self.settings.components, self.where)
        if not self.arch.native():
            foreign.require(self.arch, self.settings.bootstrap)
        self.hook_files()
        self.ensure_lock()

    # --- the lock (builder.tools.aptlock) -------------------------------------------

    @property
    def lock_path(self) -> Path:
        """distros/<distro>.lock, beside the distro's settings (a build VM's root shares it)."""
        return self.project.root / "distros" / f"{self.origin}.lock"

    def lock_section(self) -> aptlock.Section | None:
        """This root's and arch's locked versions (None: the lock has no section for them yet)."""
        return aptlock.read(self.lock_path).get((self.name, self.deb_arch))

    def refresh_hint(self) -> str:
        return f"refresh the lock: isobuild lock {self.origin} --arch {self.arch.name}"

    def ensure_lock(self, refresh: bool = False) -> tuple[aptlock.Section, aptlock.Section | None]:
        """The lock section of this root and arch: resolved against the mirror and written when it has
        none (or ``refresh``); else its every version checked against the suite's signed Packages
        index (once per mirror state) -- a locked version gone from the mirror is named with the
        command that refreshes the lock.  Returns (section, the section it replaced)."""
        sections = aptlock.read(self.lock_path)
        old = sections.get((self.name, self.deb_arch))
        asked = aptlock.request(self.suite, self.settings.components, self.packages())
        if old is not None and not refresh:
            was = old.get(aptlock.REQUEST)
            if was != asked:
                said = f"{was.version} {was.arch}" if was else "nothing"
                raise UserError(f"{self.lock_path}: {self.name} {self.deb_arch} was locked for {said}; "
                                f"{self.where} now asks for {asked.version} {asked.arch}", hint=self.refresh_hint())
            self._check_lock(old)
            return old, None
        if self.settings.bootstrap != "mmdebstrap":
            raise UserError(f"{self.where}: the lock is resolved by mmdebstrap --simulate; bootstrap is "
                            f"{self.settings.bootstrap}", hint="use bootstrap: mmdebstrap")
        argv = self.bootstrap_argv(Path("/dev/null"), Path("/nonexistent"), locked=False)
        simulate = [argv[0], "--simulate", "--verbose", *(a for a in argv[1:] if not a.startswith(
            ("--setup-hook=", "--customize-hook=", "--mode=")))]
        # what a simulation resolves is a function of the command and the mirror's state: kept by both
        resolved = self.project.work_dir / "cache" / "lock-resolutions" / keys.compute(
            {"argv": simulate, "release": self.release.sha256})
        output = resolved.read_text() if resolved.is_file() else None
        if output is None:
            with log.stage("lock.resolve", distro=self.name, arch=self.arch.name):
                try:
                    output = runner.run(simulate, capture=True, env={"DEBIAN_FRONTEND": "noninteractive"}).output
                except runner.CommandFailed as exc:
                    raise self._bootstrap_error(exc, final=False) or exc from None
        section = aptlock.parse_simulation(output)
        if not section:
            raise UserError(f"{self.where} ({self.arch.name}): the bootstrap's simulation installed nothing; no "
                            "lock can be made from it", details=output.strip().splitlines()[-5:])
        if not resolved.is_file():
            resolved.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(resolved, output)
        section[aptlock.REQUEST] = asked
        sections = aptlock.read(self.lock_path)  # re-read: another root's section may have been written
        sections[(self.name, self.deb_arch)] = section
        aptlock.write(self.lock_path, sections)
        log.get().info("lock.written", path=str(self.lock_path), root=self.name, arch=self.deb_arch,
                       packages=len(section))
        return section, old

    def _check_lock(self, section: aptlock.Section) -> None:
        stamp = self.project.work_dir / "cache" / "lock-checks" / keys.compute(
            {"lock": aptlock.digest(section), "release": self.release.sha256, "components": self.settings.components,
             "arch": self.deb_arch})
        if stamp.exists():
            return
        listed: set[tuple[str, str]] = set()
        for component in self.settings.components:
            listed |= {(s.get("Package", ""), s.get("Version", "")) for s in aptrepo.index(
                self.release, component, self.deb_arch, self.project.work_dir / "cache" / "archive" / "indexes")}
        gone = [p for p in aptlock.pins(section) if (p.name, p.version) not in listed]
        if gone:
            more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
            raise UserError(f"{self.lock_path}: {gone[0].name} {gone[0].version} ({self.name}, {self.deb_arch}){more} "
                            f"is no longer on the mirror's {self.suite}", hint=self.refresh_hint(),
                            details=[f"{p.name} {p.version}" for p in gone[:20]])
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()

    def check_root_against_lock(self, root: Path, log_path: Path) -> None:
        """The bootstrapped root holds exactly the locked versions (UserError listing how it differs)."""
        section = self.lock_section()
        if section is None:
            return
        installed = {row["package"]: row["version"] for row in self.manifest(root, log_path)}
        diff = aptlock.differences(section, installed)
        if diff:
            raise UserError(f"{self.lock_path}: the bootstrapped {self.name} root ({self.deb_arch}) differs from its "
                            f"lock: {diff[0]}" + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""),
                            hint=self.refresh_hint() + " (packages or the suite changed)", details=diff[:20])

    @property
    def deb_arch(self) -> str:
        return self.arch.deb_arch

    def packages(self) -> list[str]:
        """The settings' packages; on an arch without the host's GRUB, the root's GRUB modules too
        (the ISO's EFI loader is made from them: builder.tools.iso9660)."""
        extra = [] if self.arch.native() else [self.arch.grub_efi_package]
        return [*self.settings.packages, *(p for p in extra if p not in self.settings.packages)]

    def cmdline(self) -> str:
        """The live system's command line for this arch: console=ttyS0 is the arch's serial console,
        plus what booting under emulation needs there (builder.infra.arch)."""
        words = [f"console={self.arch.console}{w[len('console=ttyS0'):]}" if w.split(",")[0] == "console=ttyS0"
                 else w for w in self.settings.cmdline.split()]
        return " ".join([*words, *(w for w in self.arch.live_cmdline.split() if w not in words)])

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"family": self.family, "suite": self.suite, "mirror": self.mirror(), "components": s.components,
                "bootstrap": s.bootstrap, "packages": self.packages(), "hostname": s.hostname, "locale": s.locale,
                "timezone": s.timezone, "squashfs": [s.squashfs.compression, s.squashfs.level],
                "ssh_authorized_key": s.ssh_authorized_key, "overlay": self.overlay_digest(),
                "lock": self._lock_digest(),
                **({"hooks": [[h.name, digests.sha256_file(h)] for h in self.hook_files()]} if s.hooks else {}),
                **({"local_packages": [{"deb": d.path.name, "sha256": d.sha256} for d in self.local_debs()]}
                   if s.local_packages else {})}

    def _lock_digest(self) -> str | None:
        section = self.lock_section()
        return aptlock.digest(section) if section is not None else None

    def local_debs(self) -> list[pkglist.BuiltDeb]:
        """The ``local_packages`` as ``pkg build`` made them for this arch (UserError naming one it did not)."""
        built = pkglist.built_debs(self.project.work_dir, self.arch.name)
        missing = [n for n in self.settings.local_packages if n not in built]
        if missing:
            raise UserError(f"{self.where}: local_packages: {', '.join(missing)} not built for {self.arch.name} "
                            f"(built: {', '.join(sorted(built)) or 'nothing'})",
                            hint=f"build the source package first: isobuild pkg build SOURCE --arch {self.arch.name}")
        return [built[n] for n in self.settings.local_packages]

    def install_local(self, root: Path, log_path: Path) -> None:
        if self.settings.local_packages:
            self.install_packages(root, [d.path for d in self.local_debs()], True, log_path)

    # --- bootstrap ------------------------------------------------------------------

    def bootstrap_argv(self, out: Path, cache: Path, locked: bool = True) -> list[str]:
        """The bootstrap command: mmdebstrap writes a tarball ``out`` (in its unshare mode as an
        ordinary user), debootstrap a directory ``out``.  With a lock section (``locked``), mmdebstrap
        gets apt preferences that pin every locked version, put in place before apt runs."""
        s = self.settings
        section = self.lock_section() if locked and s.bootstrap == "mmdebstrap" else None
        pins: list[str] = []
        if section is not None:
            prefs = cache.with_name(cache.name + ".locks") / f"{aptlock.digest(section)}.pref"
            if not prefs.exists():
                prefs.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_text(prefs, aptlock.preferences(section))
            pins = ["--setup-hook=mkdir -p \"$1\"/etc/apt/preferences.d",
                    f"--setup-hook=copy-in {prefs} /etc/apt/preferences.d"]
        include = ",".join(self.packages())
        components = ",".join(s.components)
        if s.bootstrap == "debootstrap":
            return ["debootstrap", "--variant=minbase", f"--components={components}", f"--include={include}",
                    f"--keyring={self.keyring()}", f"--cache-dir={cache}",
                    *([] if self.arch.native() else [f"--arch={self.deb_arch}"]), self.suite, str(out), self.mirror()]
        return ["mmdebstrap", f"--mode={'unshare' if sandbox.rootless() else 'root'}", "--variant=minbase",
                *([] if self.arch.native() else [f"--architectures={self.deb_arch}"]),
                f"--components={components}", f"--include={include}", f"--keyring={self.keyring()}",
                '--aptopt=Acquire::Retries "3"', *pins,
                # the package cache goes in before apt runs and comes out before the tarball is made
                "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
                f"--setup-hook=sync-in {cache} /var/cache/apt/archives",
                # sync-in keeps the cache's owner: as an ordinary user that is no uid of the root's own
                "--setup-hook=chown -R 0:0 \"$1\"/var/cache/apt/archives",
                f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
                self.suite, str(out), self.mirror()]

    def bootstrap_key(self, argv: list[str], out: Path, cache: Path) -> str:
        """What a bootstrapped root is a function of: the command (paths aside), the tool's
        version and the mirror's state (its signed InRelease)."""
        tool = runner.output([argv[0], "--version"]).strip().splitlines()[0]
        generic = [a.replace(str(out), "<out>").replace(str(cache), "<cache>") for a in argv]
        generic = [a for a in generic if not a.startswith("--mode=")]  # root or unshare: the same root
        # a locked root is a function of its lock (in the argv, through the preferences' name), not of the
        # mirror's state: a mirror update makes no new bootstrap
        section = self.lock_section() if self.settings.bootstrap == "mmdebstrap" else None
        state = aptlock.digest(section) if section is not None else self.release.sha256
        return keys.compute({"argv": generic, "tool": tool, "mirror_release": state})

    def bootstrap(self, root: Path, cache: Path, log_path: Path) -> None:
        """The bootstrapped root, unpacked from the bootstrap cache (a tarball per command and mirror
        state: seconds instead of a bootstrap when only the kernel or glibc changed), made first
        when the cache has none."""
        cache.mkdir(parents=True, exist_ok=True)
        roots = cache.with_name(cache.name + ".roots")
        roots.mkdir(parents=True, exist_ok=True)
        probe = roots / "<out>"
        argv = self.bootstrap_argv(probe, cache)
        key = self.bootstrap_key(argv, probe, cache)
        # one per command (the live ISO's root and a build VM's differ in packages) and mirror state
        command = keys.compute({"argv": [a for a in argv if not a.startswith("--mode=")]})[:16]
        cached = roots / f"{command}.{key}.tar"
        if not cached.exists():
            tmp = roots / f".{key[:16]}.{os.getpid()}.tmp.tar"
            try:
                if self.settings.bootstrap == "debootstrap":
                    self._debootstrap_tar(tmp, cache, log_path)
                else:
                    self._run_bootstrap(self.bootstrap_argv(tmp, cache), log_path)
                os.replace(tmp, cached)
            finally:
                tmp.unlink(missing_ok=True)
            for old in roots.glob("*.tar"):  # an older mirror state of this command is never used again
                if old != cached and (old.name.startswith(f"{command}.") or "." not in old.stem):
                    old.unlink()
        root.mkdir(parents=True)
        with log.stage("rootfs.unpack", tar=str(cached)):
            chroot.unpack(cached, root, log_path)
        self.check_root_against_lock(root, log_path)
        for leftover in ("/var/cache/apt/archives/lock",):
            Root(root).remove(leftover)

    def _debootstrap_tar(self, out: Path, cache: Path, log_path: Path) -> None:
        tree = out.with_name(out.name + ".d")
        try:
            self._run_bootstrap(self.bootstrap_argv(tree, cache), log_path)
            archives = Root(tree)
            for deb in archives.glob("/var/cache/apt/archives/*.deb"):
                name = deb.rsplit("/", 1)[-1]
                if not (cache / name).exists():
                    archives.copy_out(deb, cache / name)
                archives.remove(deb)
            chroot.pack(tree, out, log_path)
        finally:
            chroot.remove_tree(tree, log_path)

    def _run_bootstrap(self, argv: list[str], log_path: Path) -> None:
        for attempt in (1, 2, 3):
            try:
                runner.run(argv, log_path=log_path, env={"DEBIAN_FRONTEND": "noninteractive"})
                return
            except runner.CommandFailed as exc:
                if _UNREACHABLE.search("\n".join(exc.error_lines + exc.tail)) and attempt < 3:
                    continue
                raise self._bootstrap_error(exc, final=True) or exc from None

    def _bootstrap_error(self, exc: runner.CommandFailed, final: bool) -> IsobuildError | None:
        """A failed bootstrap (or its simulation) said plainly: a package the suite lacks, an
        unreachable mirror; None when it is neither."""
        text = "\n".join(exc.error_lines + exc.tail)
        if m := _UNKNOWN_PACKAGE.search(text):
            pkg = next((g for g in m.groups() if g), "?")
            return UserError(f"{self.where}: package {pkg!r} does not exist in "
                             f"{self.suite}/{self.deb_arch} ({', '.join(self.settings.components)})",
                             hint="fix 'packages' (apt-cache policy NAME on a Debian host tells)", details=exc.details)
        if _UNREACHABLE.search(text):
            return InfraError(f"the Debian mirror {self.mirror()} is unreachable" + (" (3 attempts)" if final else ""),
                              hint=f"check the network, or set 'mirror:' in {self.where}", details=exc.details)
        return None

    # --- kernel, configuration ----------------------------------------------------

    def install_packages(self, root: Path, packages: list[Path], hold: bool, log_path: Path,
                         env: dict[str, str] | None = None) -> None:
        r = Root(root)
        names = [runner.output(["dpkg-deb", "--field", str(deb), "Package"]).strip() for deb in packages]
        for deb in packages:
            r.copy_in(deb, f"/tmp/isobuild-debs/{deb.name}")
        # no daemons may start inside the build root
        r.write_text("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
        try:
            inside = Chroot(root, log_path, env={"DEBIAN_FRONTEND": "noninteractive", **(env or {})})
            # one dpkg run: a set that depends on itself (libc6, libc-bin, ...) goes in together
            inside.run(["dpkg", "-i", *(f"/tmp/isobuild-debs/{deb.name}" for deb in packages)])
            if hold:
                inside.run(["apt-mark", "hold", *names])
        finally:
            r.remove("/usr/sbin/policy-rc.d")
            r.remove("/tmp/isobuild-debs")

    def install_glibc(self, root: Path, glibc_dir: Path, meta: dict[str, Any], log_path: Path) -> None:
        installed = {row["package"]: row["version"] for row in self.manifest(root, log_path)}
        ours = str(meta["version"])
        if "libc6" in installed and not self.project.settings.glibc.allow_downgrade:
            glibc.check_not_downgrade(
                ours, installed["libc6"], f"libc6 in the {self.name} root (from its mirror):",
                hint="the mirror has a newer glibc than the source isobuild patched: update it "
                     "(apt-get install glibc-source) and run isobuild glibc again, or set glibc.allow_downgrade")
        debs = glibc.debs_for(meta, glibc_dir, set(installed))
        if not any(d.name.startswith("libc6_") for d in debs):
            raise UserError(f"{glibc_dir}/debs: no libc6 package to install in the {self.name} root",
                            hint="rebuild it: isobuild glibc --force")
        self.install_packages(root, debs, True, log_path)

    def install_kernel(self, root: Path, kernel_packages: list[Path], release: str, log_path: Path,
                       epoch: int) -> None:
        debs = [d for d in kernel_packages if d.name.startswith(f"linux-image-{release}_")]
        if not debs:
            raise UserError(f"no linux-image-{release} package among {', '.join(p.name for p in kernel_packages)}",
                            hint="rebuild it: isobuild kernel --force")
        self.initramfs_settings(root)  # the kernel's postinst makes the initramfs: its settings go first
        # mkinitramfs clamps every time in the image to SOURCE_DATE_EPOCH (the kernel's) and has cpio
        # number the inodes itself: without it the initrd held the build's date and differed each time
        self.install_packages(root, debs[:1], True, log_path, env={"SOURCE_DATE_EPOCH": str(epoch)})
        _, initrd = self.boot_files(root, release)
        if not Root(root).exists(initrd):
            raise InfraError(f"installing {debs[0].name} made no initramfs ({initrd})",
                             hint="is initramfs-tools in the packages? see the log", details=[f"log: {log_path}"])

    def initramfs_settings(self, root: Path) -> None:
        """live-boot's initramfs settings for this root (initramfs-tools sources conf.d at boot).

        Without ifupdown in the image, live-boot's "Preconfiguring networking" only fails
        (it writes /etc/network/interfaces, a directory the root lacks) after a `udevadm
        trigger` + `settle`: 2 s of every boot under TCG, and an error line on the console.
        """
        r = Root(root)
        conf = f"/etc/initramfs-tools/conf.d/{INITRAMFS_CONF}"
        if r.exists("/sbin/ifup") or r.exists("/usr/sbin/ifup"):
            r.remove(conf)
            return
        r.write_text(conf, "# isobuild: no ifupdown in this image, so live-boot has no interfaces file to write\n"
                     "NONETWORKING=true\nexport NONETWORKING\n")

    def configure(self, root: Path, log_path: Path, smoke_script: str) -> None:
        """Written from outside through builder.tools.rootdir (nothing mounted in the root meanwhile);
        the overlay comes after isobuild's own files, so a project can override them."""
        s = self.settings
        r = Root(root)
        self.write_identity(r, s.hostname)
        r.write_text("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{s.hostname}\n"
                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
        r.write_text("/etc/fstab", "# live system: live-boot mounts the root\n")
        r.write_text("/etc/default/locale", f"LANG={s.locale}\n")
        if s.timezone not in ("Etc/UTC", "UTC") and not r.exists(f"/usr/share/zoneinfo/{s.timezone}"):
            raise UserError(f"{self.where}: timezone: {s.timezone!r} is not a zoneinfo name")
        r.symlink("/etc/localtime", f"/usr/share/zoneinfo/{s.timezone}")
        r.write_text("/etc/timezone", s.timezone + "\n")
        self.lock_root_account(root, log_path)
        if s.ssh_authorized_key:
            self.authorize_ssh(r, s.ssh_authorized_key)
        self.apply_overlay(r)
        self.run_hooks(root, log_path)
        self.install_smoke_check(r, smoke_script)

    def hook_files(self) -> list[Path]:
        """The ``hooks`` scripts: project files, each checked to be one."""
        return [paths.project_input(self.project.root, h, "hooks", self.where, "file") for h in self.settings.hooks]

    def run_hooks(self, root: Path, log_path: Path) -> None:
        r = Root(root)
        for n, script in enumerate(self.hook_files(), 1):
            inside = f"/tmp/isobuild-hook-{n}"
            r.write_bytes(inside, script.read_bytes(), 0o755)
            try:
                with log.stage("rootfs.hook", distro=self.name, hook=script.name):
                    Chroot(root, log_path, env={"DEBIAN_FRONTEND": "noninteractive"}).run([inside])
            finally:
                r.remove(inside)

    def authorize_ssh(self, r: Root, public_key: str) -> None:
        """``public_key`` the one way into root's account over SSH: no passwords; host keys made at
        the first boot (cleanup removes the root's: they must differ per machine), before the
        unit's own `sshd -t` (a drop-in's ExecStartPre= would run after it, so the list is emptied
        and written again)."""
        r.mkdir("/root/.ssh", 0o700)
        r.chmod("/root/.ssh", 0o700)
        r.write_text("/root/.ssh/authorized_keys", public_key.strip() + "\n", 0o600)
        r.write_text("/etc/systemd/system/ssh.service.d/isobuild-hostkeys.conf",
                     "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
                     "ExecStartPre=/usr/sbin/sshd -t\n")
        r.write_text("/etc/ssh/sshd_config.d/isobuild.conf",
                     "# isobuild: keys only, no passwords\nPasswordAuthentication no\n"
                     "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")

    def boot_files(self, root: Path, release: str) -> tuple[str, str]:
        return f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}"

    def manifest(self, root: Path, log_path: Path) -> list[dict[str, str]]:
        admindir = Root(root).resolve("/var/lib/dpkg")
        out = runner.output(["dpkg-query", f"--admindir={admindir}", "-W",
                             "-f=${Package}\t${Version}\t${Architecture}\n"])
        rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 2]
        return [{"package": p, "version": v, "arch": a} for p, v, a in sorted(rows)]

    def cleanup(self, root: Path, log_path: Path) -> None:
        self.remove_volatile(Root(root), [
            "/var/lib/apt/lists/*", "/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb",
            "/var/cache/debconf/*-old", "/var/lib/dpkg/*-old", "/var/log/*.log", "/var/log/apt/*",
            "/var/lib/dbus/machine-id", "/etc/ssh/ssh_host_*", "/tmp/*", "/var/tmp/*", "/root/.bash_history",
            "/etc/resolv.conf", "/var/cache/ldconfig/aux-cache"], keep=("lock", "partial", "auxcache"))

    def layout(self) -> LiveLayout:
        return LiveLayout("live/vmlinuz", "live/initrd.img", "live/filesystem.squashfs", self.cmdline(),
                          self.settings.label)

