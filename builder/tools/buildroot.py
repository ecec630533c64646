"""Build roots: a Debian suite's buildd root for this host's arch with a target arch added (a cross
build), or one of the target arch itself (its programs run through qemu-user-static).

Cross-building a Debian package for another arch needs that arch in *a* dpkg's architecture list
and its cross toolchain and -dev packages installed -- never in the host's own dpkg.  So the build
runs in a root bootstrapped by mmdebstrap from the target suite (``--variant=buildd``, the host's
arch native, the target arch foreign, ``crossbuild-essential-<arch>`` in), cached as a tarball
keyed by the command and the suite's signed InRelease: a second build unpacks it in seconds
instead of minutes.  Its apt lists stay in the tarball (the root's view of the mirror is the one
its key names), so build dependencies install without an ``apt-get update``; the packages they
download are kept in a cache beside the tarballs for the next build.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.infra import keys, log, runner, sandbox
from builder.infra.arch import Arch, host_arch
from builder.infra.arch import get as get_arch
from builder.tools import aptrepo, chroot
from builder.tools.chroot import Chroot
from builder.tools.rootdir import Root

ARCHIVES = "/var/cache/apt/archives"


@dataclass(frozen=True)
class CrossRoot:
    suite: str
    mirror: str
    keyring: Path
    target: Arch
    release: aptrepo.Release  # the suite's signed InRelease (its sha256 is in the key)
    cache: Path  # <work>/cache/cross-roots
    cross: bool = True  # False: a root of the target arch itself, its own compiler (no crossbuild-essential)

    @property
    def host_deb_arch(self) -> str:
        return get_arch(host_arch()).deb_arch

    def argv(self, out: Path) -> list[str]:
        arches = f"{self.host_deb_arch},{self.target.deb_arch}" if self.cross else self.target.deb_arch
        include = [f"--include=crossbuild-essential-{self.target.deb_arch}"] if self.cross else []
        return ["mmdebstrap", f"--mode={'unshare' if sandbox.rootless() else 'root'}", "--variant=buildd",
                f"--architectures={arches}", *include, f"--keyring={self.keyring}",
                '--aptopt=Acquire::Retries "3"', "--skip=cleanup/apt/lists",
                self.suite, str(out), self.mirror]

    @property
    def key(self) -> str:
        generic = [a for a in self.argv(Path("<out>")) if not a.startswith("--mode=")]
        return keys.compute({"argv": generic, "mirror_release": self.release.sha256})

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.target.deb_arch}" + ("" if self.cross else "-native")

    @property
    def tarball(self) -> Path:
        return self.cache / f"{self.name}-{self.key[:16]}.tar.zst"

    @property
    def archives(self) -> Path:
        """The .debs build dependencies were downloaded as, kept for the next build."""
        return self.cache / f"{self.name}.archives"

    def ensure(self, log_path: Path) -> Path:
        """The root's tarball, bootstrapped when this key has none; older ones of the suite and arch go."""
        if self.tarball.exists():
            return self.tarball
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = self.tarball.with_name(f".{self.tarball.name}.{os.getpid()}.tmp.tar.zst")
        try:
            with log.stage("buildroot.bootstrap", suite=self.suite, arch=self.target.name):
                runner.run(self.argv(tmp), log_path=log_path, env={"DEBIAN_FRONTEND": "noninteractive"})
            os.replace(tmp, self.tarball)
        finally:
            tmp.unlink(missing_ok=True)
        for old in self.cache.glob(f"{self.name}-*.tar.zst"):
            if old != self.tarball and len(old.name) == len(self.tarball.name):  # this kind's, not the other's
                old.unlink()
        return self.tarball

    def unpack(self, root: Path, log_path: Path) -> Chroot:
        """The root unpacked at ``root`` (which must not exist), the kept packages put back in its
        apt cache; returns the way to run commands in it."""
        tarball = self.ensure(log_path)
        root.mkdir(parents=True)
        with log.stage("buildroot.unpack", tarball=str(tarball)):
            chroot.unpack(tarball, root, log_path)
        inside = Root(root)
        for deb in sorted(self.archives.glob("*.deb")) if self.archives.is_dir() else []:
            inside.copy_in(deb, f"{ARCHIVES}/{deb.name}")
        return Chroot(root, log_path, env={"DEBIAN_FRONTEND": "noninteractive"})

    def check(self) -> None:
        """Nothing beyond the suite's mirror, which the distro's own check has answered."""

    def make(self, root: Path, packages: Sequence[Path], log_path: Path) -> Chroot:
        """The root unpacked at ``root`` (which must not exist) with ``packages`` (.debs a build hands
        in: the headers and libc it compiles against) installed over the suite's with dpkg."""
        inside = self.unpack(root, log_path)
        r = Root(root)
        for deb in packages:
            r.copy_in(deb, f"/tmp/isobuild-debs/{deb.name}")
        with log.stage("buildroot.packages", packages=[d.name for d in packages]):
            inside.run(["dpkg", "-i", *(f"/tmp/isobuild-debs/{d.name}" for d in packages)])
        return inside

    def keep_archives(self, root: Path) -> None:
        """Keep the packages apt downloaded into the root for the next build of this suite and arch."""
        self.archives.mkdir(parents=True, exist_ok=True)
        inside = Root(root)
        for path in inside.glob(f"{ARCHIVES}/*.deb"):
            name = path.rsplit("/", 1)[-1]
            if not (self.archives / name).exists():
                tmp = self.archives / f".{name}.tmp"
                inside.copy_out(path, tmp)
                os.replace(tmp, self.archives / name)


def remove(root: Path, log_path: Path | None = None) -> None:
    """Delete an unpacked build root (nothing is ever mounted in it outside a command's namespace)."""
    chroot.remove_root(root, log_path)
