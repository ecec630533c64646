"""distcc for build VMs: compiles sent from the guest run on the host, with a compiler that matches.

A guest preprocesses (its own headers) and distcc ships the result to ``distccd``; the object
file that comes back must be what the guest's own gcc would have made, so the host side has to
run *the same GCC release, built for the guest's arch*.  The host's own cross compilers are
bookworm's gcc-12; a trixie guest (riscv64 here) has gcc-14.  So the server side is a tool root
of the guest's suite (builder.tools.buildroot: mmdebstrap, the host's arch, ``crossbuild-essential``
for the guest's, or the native compilers when the guest's arch is the host's) with that suite's
``distcc`` added: Debian's distccd and the suite's cross gcc, the same versions the guest has.

distccd runs in that root (mount and PID namespaces only: it shares the host's network) on
``127.0.0.1`` with ``--allow 127.0.0.1``; the guest reaches it through a ``guestfwd`` relay
(builder.tools.relay).  distccd only runs compilers masqueraded in ``/usr/lib/distcc``; each name
the guest may send (``gcc``, ``cc``, ``gcc-14``, ``<triplet>-gcc-14``, the C++ ones) is linked
there and, in a directory first on ``DISTCCD_PATH``, to the suite's ``<triplet>-gcc-<major>``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from builder.infra import atomic, keys, log, runner, sandbox
from builder.infra.arch import Arch, host_arch
from builder.infra.errors import InfraError, UserError
from builder.tools import aptrepo, buildroot
from builder.tools.relay import GUEST_HOST
from builder.tools.rootdir import Root

COMPILERS = "/usr/local/lib/isobuild-distcc"  # inside the root: the names distccd runs
MASQUERADE = "/usr/lib/distcc"
READY = ".isobuild-distcc-ready"
GUEST_PORT = 3632
STAGE_VERSION = 1


def names(triplet: str, major: str) -> dict[str, str]:
    """Compiler names a guest may send -> the suite's compiler they stand for."""
    out = {}
    for lang, drivers in (("gcc", ("gcc", "cc")), ("g++", ("g++", "c++"))):
        target = f"/usr/bin/{triplet}-{lang}-{major}"
        for name in (*drivers, f"{lang}-{major}", f"{triplet}-{lang}", f"{triplet}-{lang}-{major}"):
            out[name] = target
    return out


@dataclass(frozen=True)
class ToolRoot:
    base: buildroot.CrossRoot  # the suite's buildd root for the host (cross=False when target = host)
    cache: Path  # <work>/cache/distcc-roots

    @property
    def key(self) -> str:
        return keys.compute({"base": self.base.key, "add": ["distcc"], "version": STAGE_VERSION})

    @property
    def directory(self) -> Path:
        return self.cache / f"{self.base.name}-{self.key[:16]}"

    def ready(self) -> bool:
        return (self.directory / READY).is_file()

    def ensure(self, log_path: Path) -> Path:
        """The root unpacked, distcc installed from the suite, the compiler names linked."""
        if self.ready():
            return self.directory
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temp_path(self.directory)
        if tmp.exists():
            buildroot.remove(tmp, log_path)
        with log.stage("distcc.root", suite=self.base.suite, arch=self.base.target.name):
            chroot = self.base.unpack(tmp, log_path)
            chroot.run(["apt-get", "install", "-y", "--no-install-recommends", "distcc"])
            self.base.keep_archives(tmp)
            major = gcc_major(tmp, self.base.target.triplet)
            inside = Root(tmp)
            inside.mkdir(COMPILERS)
            inside.mkdir(MASQUERADE)
            for name, target in names(self.base.target.triplet, major).items():
                inside.symlink(f"{COMPILERS}/{name}", target)
                inside.symlink(f"{MASQUERADE}/{name}", "../../bin/distcc")
            inside.write_text(f"/{READY}", f"{major}\n")
        for old in self.cache.glob(f"{self.base.name}-*"):
            if old != self.directory and not old.name.startswith("."):
                buildroot.remove(old, log_path)
        os.replace(tmp, self.directory)
        return self.directory

    def major(self) -> str:
        return (self.directory / READY).read_text().strip()


def gcc_major(root: Path, triplet: str) -> str:
    """The major version of the root's ``<triplet>-gcc-N`` (the suite's default gcc for that arch)."""
    majors = sorted((m.group(1) for p in (root / "usr/bin").glob(f"{triplet}-gcc-*")
                     if (m := re.fullmatch(rf"{re.escape(triplet)}-gcc-([0-9]+)", p.name))), key=int)
    if not majors:
        raise InfraError(f"no {triplet}-gcc-N in the distcc tool root {root}",
                         hint="the suite's crossbuild-essential / build-essential did not install a compiler")
    return majors[-1]


def check_server(root: Path) -> None:
    """The root holds Debian's distccd (UserError naming it otherwise)."""
    if not (root / "usr/bin/distccd").is_file():
        raise UserError(f"distccd missing: {root}/usr/bin/distccd is not there",
                        hint="the tool root is incomplete: remove it and re-run (isobuild rebuilds it with the "
                             "suite's distcc package)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_argv(root: Path, port: int, jobs: int) -> list[str]:
    """distccd in the tool root: loopback only, logging every job to stderr (the caller's log)."""
    argv = ["distccd", "--daemon", "--no-detach", "--listen", "127.0.0.1", "--allow", "127.0.0.1",
            "--port", str(port), "--jobs", str(jobs), "--log-stderr", "--log-level", "info", "--user", "nobody"]
    env = {"DISTCCD_PATH": f"{COMPILERS}:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"}
    return sandbox.chroot_argv(root, argv, env)


def serve(root: Path, jobs: int, log_path: Path, timeout: float = 30.0) -> tuple[runner.Spawned, int]:
    """Start distccd on a free loopback port; returns once it accepts connections."""
    check_server(root)
    port = free_port()
    server = runner.spawn(server_argv(root, port, jobs), log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, port
        except OSError:
            time.sleep(0.2)
    server.stop()
    tail = log_path.read_text(errors="replace").splitlines()[-8:] if log_path.exists() else []
    raise InfraError(f"distccd did not start on 127.0.0.1:{port}", details=[*tail, f"log: {log_path}"])


@dataclass(frozen=True)
class Counts:
    ok: int
    failed: int


def counts(log_path: Path) -> Counts:
    """Jobs distccd finished, from its log (``COMPILE_OK`` / ``COMPILE_ERROR`` job summaries)."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return Counts(0, 0)
    return Counts(text.count("COMPILE_OK"), text.count("COMPILE_ERROR"))


def guest_env(jobs: int) -> dict[str, str]:
    """The guest's environment for a build through distcc (the relay's address, no local fallback
    retry: a job the host refuses shows up as a failure, not as a silent local compile)."""
    return {"DISTCC_HOSTS": f"{GUEST_HOST}:{GUEST_PORT}/{jobs}", "DISTCC_SKIP_LOCAL_RETRY": "1",
            "DISTCC_FALLBACK": "0", "DISTCC_DIR": "/tmp/distcc"}


def tool_root(suite: str, mirror: str, keyring: Path, target: Arch, release: aptrepo.Release,
              work_dir: Path) -> ToolRoot:
    """The tool root for a guest of ``target`` running ``suite`` (native compilers when it is the host's arch)."""
    base = buildroot.CrossRoot(suite, mirror, keyring, target, release, work_dir / "cache" / "cross-roots",
                               cross=target.name != host_arch())
    return ToolRoot(base, work_dir / "cache" / "distcc-roots")
