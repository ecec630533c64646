"""The bad-input catalogue: settings, distro files, patches, series, kickstarts, CLI arguments and
host faults a real project might contain, each refused with one line naming the culprit.

Every case starts from a copy of one project whose (fake) kernel was built once, breaks one thing,
runs a verb and asserts: the exit code (2 bad input, 3 host fault; never 1, never a traceback),
the error line naming the file, setting or patch, that nothing outside the work and output
directories changed (the project's own files, a canary tree the bad inputs point at, and the host
paths they aim for), and that the last good kernel is still the current one, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import cli
from builder.infra import lock
from builder.tools import foreign
from builder.tools import vm as vmt
from tests.conftest import FAKELINUX, XSC_PATCH, make_patch, records, sha256, write_lock
from tests.fakemirror import Mirror

REPO = Path(__file__).resolve().parents[2]
HOST_PATHS = [Path(p) for p in ("/etc/passwd", "/etc/hostname", "/etc/hosts", "/usr/share/zoneinfo/Etc/UTC",
                                "/etc/shadow", "/etc/cron.d")]
ALMA_REPO = "alma-repo"


@dataclass
class Case:
    base: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def project(self) -> Path:
        return self.base / "project"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def canary(self) -> Path:
        return self.base / "canary"

    def settings(self) -> Any:
        return yaml.safe_load((self.project / "isobuild.yaml").read_text())

    def set(self, **changes: object) -> None:
        data = self.settings()
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split("__")
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        (self.project / "isobuild.yaml").write_text(yaml.safe_dump(data))

    def distro(self, name: str, **changes: object) -> None:
        path = self.project / "distros" / f"{name}.yaml"
        data = yaml.safe_load(path.read_text())
        data.update(changes)
        path.write_text(yaml.safe_dump(data))

    def series(self, patches: dict[str, str]) -> None:
        d = self.project / "patches" / "kernel"
        for old in d.glob("*.patch"):
            old.unlink()
        for name, text in patches.items():
            (d / name).write_text(text)
        (d / "series").write_text("".join(f"{n}\n" for n in patches))

    def run(self, *args: str) -> int:
        return cli.main(["-c", str(self.project / "isobuild.yaml"), *args])


def _snapshot(base: Path) -> dict[str, tuple[str, int]]:
    """Every entry outside the work dir and the output dirs: content (or link target) and mode."""
    out = {}
    skip = {base / "work", base / "project" / "logs", base / "project" / "iso"}
    for path in sorted(base.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        st = path.lstat()
        if path.is_symlink():
            out[str(path)] = ("-> " + os.readlink(path), st.st_mode)
        elif path.is_file():
            out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode)
        else:
            out[str(path)] = ("dir", st.st_mode)
    for host in HOST_PATHS:
        seen = host.lstat() if host.exists() else None
        out[str(host)] = (str(seen.st_mtime_ns) if seen else "absent", seen.st_mode if seen else 0)
    return out


def _no_binfmt(case: Case) -> None:
    """A host where binfmt_misc is not mounted (restored by the test's monkeypatch)."""
    case.distro("debian", arches=["x86_64", "arm64"])
    case.monkeypatch.setattr(foreign, "BINFMT_DIR", case.base / "no-binfmt")


def _last_good(case: Case) -> tuple[str, str]:
    current = records(case.project, case.work) / "current" / "kernel-ci-x86_64"
    return os.readlink(current), sha256(current / "metadata.json")


def _sources(mirror: Mirror, scratch: Path) -> None:
    """Two source packages in the fake mirror: ``tiny`` (a real 3.0 (native) package dpkg-source made)
    and ``tampered`` (its tarball changed after the signed index listed it)."""
    for name in ("tiny", "tampered"):
        tree = scratch / f"{name}-1.0"
        (tree / "debian" / "source").mkdir(parents=True)
        (tree / "debian" / "source" / "format").write_text("3.0 (native)\n")
        (tree / "debian" / "control").write_text(f"Source: {name}\nMaintainer: t <t@test.invalid>\n\n"
                                                 f"Package: {name}\nArchitecture: any\nDescription: t\n t\n")
        (tree / "debian" / "changelog").write_text(f"{name} (1.0) unstable; urgency=medium\n\n  * t\n\n"
                                                   " -- t <t@test.invalid>  Sat, 01 Jun 2024 10:00:00 +0000\n")
        (tree / "debian" / "rules").write_text("#!/usr/bin/make -f\n%:\n\tdh $@\n")
        (tree / "hello.c").write_text("int main(void) { return 0; }\n")
        subprocess.run(["dpkg-source", "-b", tree.name], cwd=scratch, check=True, capture_output=True)
        files = {p.name: p.read_bytes() for p in scratch.glob(f"{name}_1.0*") if p.is_file()}
        pool = mirror.add_source("bookworm", name, "1.0", files)
        if name == "tampered":
            (pool / "tampered_1.0.tar.xz").write_bytes(b"not what the index says")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a built fake kernel, a Debian distro over a signed fake mirror and an EL distro over
    a local repository: every verb the catalogue runs passes here before a case breaks one thing."""
    base = tmp_path_factory.mktemp("badinput")
    tarball = base / "linux-fake.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(FAKELINUX, arcname="linux-fake")
    mirror = Mirror.create(base / "mirror")
    _sources(mirror, base / "srcpkgs")
    mirror.add_deb("bookworm", "amd64", "base-files", "12.4", b"a package the lock names")
    mirror.publish("bookworm")
    root = base / "project"
    (root / "patches" / "kernel").mkdir(parents=True)
    (root / "profiles" / "kernel").mkdir(parents=True)
    (root / "profiles" / "kernel" / "ci.yaml").write_text("base: tinyconfig\nfragments: [ci.config]\n")
    (root / "profiles" / "kernel" / "ci.config").write_text("CONFIG_FAKE_BASE=y\nCONFIG_FAKE_FEATURE=y\n")
    (root / "patches" / "kernel" / "xsc.config").write_text("CONFIG_FAKE_XSC=y\n")
    (root / "patches" / "kernel" / "0001-xsc.patch").write_text(XSC_PATCH)
    (root / "patches" / "kernel" / "series").write_text("0001-xsc.patch\n")
    (root / "distros").mkdir()
    (root / "keyring.gpg").write_bytes(mirror.keyring.read_bytes())
    (root / "distros" / "debian.yaml").write_text(yaml.safe_dump({
        "mirror": mirror.uri, "keyring": "keyring.gpg"}))
    repo = base / ALMA_REPO
    (repo / "repodata").mkdir(parents=True)
    (repo / "repodata" / "repomd.xml").write_text("<repomd/>\n")
    (root / "kickstart").mkdir()
    shutil.copy(REPO / "kickstart" / "el-live.ks.j2", root / "kickstart")
    (root / "distros" / "alma.yaml").write_text(yaml.safe_dump({
        "family": "el", "build": "dnf", "label": "ISOBUILD_ALMA",
        "repositories": [{"name": "baseos", "baseurl": f"file://{repo}", "gpgcheck": False}],
        "glibc": {"enabled": False}}))
    (root / "isobuild.yaml").write_text(yaml.safe_dump({
        "work_dir": "../work",
        "kernel": {"source": {"type": "tarball", "path": "../linux-fake.tar.gz", "sha256": sha256(tarball)},
                   "profile": "ci", "fragments": ["patches/kernel/xsc.config"]},
        "glibc": {"enabled": False}}))
    write_lock(root, {"base-files": ("12.4", "amd64")})
    canary = base / "canary"
    (canary / "etc").mkdir(parents=True)
    (canary / "etc" / "passwd").write_text("canary passwd\n")
    (canary / "secret").write_text("canary secret\n")
    old = Path.cwd()
    os.chdir(root)
    try:
        assert cli.main(["-c", str(root / "isobuild.yaml"), "kernel"]) == 0
    finally:
        os.chdir(old)
    return base


@pytest.fixture
def case(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    base = tmp_path / "case"
    shutil.copytree(template, base, symlinks=True, ignore=shutil.ignore_patterns("S.gpg-agent*", "*-gnupg"))
    # the project moved: its records go with it (they are keyed by the project's directory)
    os.rename(records(template / "project", base / "work"), records(base / "project", base / "work"))
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    monkeypatch.chdir(base / "project")
    return Case(base, monkeypatch)


def _relock(case: Case, pins: dict[str, tuple[str, str]]) -> None:
    (case.project / "distros" / "debian.lock").unlink()
    write_lock(case.project, pins)


def _vm_record(case: Case, name: str, state: str) -> None:
    """A VM of the project as isobuild recorded it; its QEMU is not running (this pid is not a QEMU)."""
    directory = records(case.project, case.work) / "vms" / name
    directory.mkdir(parents=True)
    vmt.Machine(directory).save(vmt.Record(name, "x86_64", "debian", str(directory / "base.qcow2"), "k" * 64,
                                           10022, "bios", False, 2, 1536, 8 << 30, state=state, pid=os.getpid()))


def _port_held(case: Case) -> None:
    """A listener on a loopback port (kept open until the case ends), named by --port."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    argv = CASE_ARGV["vm-port-taken"]
    argv[-1] = str(held.getsockname()[1])
    case.monkeypatch.setattr(case, "sockets", [held], raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Break = Callable[[Case], object]


def _settings_text(text: str) -> Break:
    return lambda c: (c.project / "isobuild.yaml").write_text(text)


def _settings_bytes(data: bytes) -> Break:
    return lambda c: (c.project / "isobuild.yaml").write_bytes(data)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _overlay(make: Callable[[Path], object]) -> Break:
    def go(c: Case) -> None:
        overlay = c.project / "overlay"
        overlay.mkdir()
        make(overlay)
        c.distro("debian", overlay="overlay")
    return go


def _symlink_patch(target: str, link: str = "drivers/xsc-link") -> str:
    return (f"diff --git a/{link} b/{link}\nnew file mode 120000\nindex 0000000..1111111\n--- /dev/null\n"
            f"+++ b/{link}\n@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n")


def _kickstart(extra: str) -> Break:
    def go(c: Case) -> None:
        ks = c.project / "kickstart" / "el-live.ks.j2"
        ks.write_text(ks.read_text() + extra)
    return go


def _series_link(c: Case) -> None:
    (c.project / "patches" / "kernel" / "0002-link.patch").symlink_to(c.canary / "secret")
    (c.project / "patches" / "kernel" / "series").write_text("0001-xsc.patch\n0002-link.patch\n")


def _patches_dir_link(c: Case) -> None:
    (c.project / "patches" / "outside").symlink_to(c.canary)
    c.set(kernel__patches="patches/outside")


def _bad_signature(c: Case) -> None:
    other = Mirror.create(c.base / "other-mirror")
    other.publish("bookworm")
    c.distro("debian", mirror=other.uri)


def _no_arch(c: Case) -> None:
    other = Mirror.create(c.base / "armonly")
    other.publish("bookworm", architectures="arm64")
    (c.project / "keyring.gpg").write_bytes(other.keyring.read_bytes())
    c.distro("debian", mirror=other.uri)


def _write_series(c: Case, where: str) -> None:
    """A series of ours for a source package whose one patch changes a line the source does not have."""
    patch = ("--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-int main(void) { return 1; }\n"
             "+int main(void) { return 2; }\n")
    _write(c.project / where / "0001-x.patch", patch)
    _write(c.project / where / "series", "0001-x.patch\n")


def _tampered_dsc(c: Case) -> None:
    """A local .dsc (outside the project, in the canary tree) whose tarball changed after it was made."""
    data = b"original"
    (c.canary / "local_1.0.tar.xz").write_bytes(b"changed!")
    (c.canary / "local_1.0.dsc").write_text(
        "Format: 3.0 (native)\nSource: local\nVersion: 1.0\nChecksums-Sha256:\n"
        f" {hashlib.sha256(data).hexdigest()} {len(data)} local_1.0.tar.xz\n")


def _symlinked_dsc(c: Case) -> None:
    """A local .dsc whose tarball is a symlink to a file elsewhere (a host file, say)."""
    _tampered_dsc(c)
    (c.canary / "local_1.0.tar.xz").unlink()
    (c.canary / "local_1.0.tar.xz").symlink_to(c.canary / "secret")


def _locked(c: Case) -> None:
    c.held = lock.held(c.work)  # type: ignore[attr-defined]
    c.held.__enter__()  # type: ignore[attr-defined]


def _missing_tool(c: Case) -> None:
    bin_dir = c.base / "bin"
    bin_dir.mkdir()
    for tool in ("make", "tar", "gcc", "python3", "cp", "cat", "mkdir", "sh", "bash", "env", "grep", "sed",
                 "dpkg-deb", "dpkg", "unshare", "gpgv", "perl", "flex", "bison", "bc", "rsync", "rpmbuild"):
        real = shutil.which(tool)
        if real:
            (bin_dir / tool).symlink_to(real)
    os.environ["PATH"] = str(bin_dir)  # restored by the fixture's monkeypatch below


CASES: list[tuple[str, Break, list[str], int, str]] = [
    # --- isobuild.yaml ---------------------------------------------------------------------
    ("yaml-syntax", _settings_text("kernel: [\n"), ["status"], 2, r"isobuild.yaml:\d+: not valid YAML"),
    ("yaml-top-list", _settings_text("- a\n- b\n"), ["status"], 2,
     r"isobuild.yaml: \(top level\): expected a mapping"),
    ("yaml-not-utf8", _settings_bytes(b"work_dir: \xff\xfe\n"), ["status"], 2,
     r"isobuild.yaml: settings file is not UTF-8"),
    ("unknown-key", lambda c: c.set(kernel__patchez="x"), ["status"], 2, r"isobuild.yaml: kernel.patchez: unknown key"),
    ("wrong-type", lambda c: c.set(jobs="many"), ["kernel"], 2, r"isobuild.yaml: jobs: expected an integer"),
    ("work-dir-root", lambda c: c.set(work_dir="/"), ["status"], 2, r"work_dir: / is the root directory"),
    ("work-dir-etc", lambda c: c.set(work_dir="/etc/isobuild"), ["status"], 2,
     r"work_dir: /etc/isobuild is inside a system directory tree"),
    ("work-dir-usr", lambda c: c.set(work_dir="/usr/lib/isobuild"), ["kernel"], 2, r"work_dir: .* system directory"),
    ("work-dir-project", lambda c: c.set(work_dir="."), ["status"], 2, r"work_dir: .* is the project directory itself"),
    ("work-dir-parent", lambda c: c.set(work_dir=".."), ["clean"], 2, r"work_dir: .* a parent of the project"),
    ("work-dir-inputs", lambda c: c.set(work_dir="patches/cache"), ["status"], 2,
     r"work_dir: .* one of the project's input directories"),
    ("work-dir-a-file", lambda c: c.set(work_dir="../canary/secret"), ["status"], 2, r"work_dir: .* not a directory"),
    ("logs-dir-etc", lambda c: c.set(logs_dir="/etc"), ["status"], 2, r"logs_dir: /etc is inside a system"),
    ("logs-is-work", lambda c: c.set(logs_dir="../work"), ["status"], 2, r"logs_dir and work_dir are the same"),
    ("env-work-dir", lambda c: os.environ.__setitem__("ISOBUILD_WORK_DIR", "/boot/x"), ["status"], 2,
     r"environment: ISOBUILD_WORK_DIR: /boot/x is inside a system"),
    ("patches-outside", lambda c: c.set(kernel__patches="../canary"), ["kernel"], 2,
     r"kernel.patches: '../canary' resolves to .*, outside the project"),
    ("patches-dir-link-out", _patches_dir_link, ["kernel"], 2, r"kernel.patches: .* outside the project"),
    ("fragment-outside", lambda c: c.set(kernel__fragments=["/etc/passwd"]), ["kernel"], 2,
     r"kernel.fragments: /etc/passwd resolves to /etc/passwd, outside the project"),
    ("marker-regex", lambda c: c.set(kernel__boot__marker_pattern="(unclosed"), ["status"], 2,
     r"kernel.boot.marker_pattern: is not a valid regular expression"),
    ("profile-path", lambda c: c.set(kernel__profile="../../etc/x"), ["status"], 2,
     r"kernel.profile: must be a profile name"),
    ("tarball-sha", lambda c: c.set(kernel__source__sha256="0" * 64), ["kernel"], 2,
     r"linux-fake.tar.gz: checksum mismatch"),
    ("tarball-missing", lambda c: c.set(kernel__source__path="../nope.tar.gz"), ["kernel"], 2,
     r"nope.tar.gz: kernel source tarball not found"),
    ("localversion", lambda c: c.set(kernel__localversion="-$(reboot)"), ["kernel"], 2,
     r"kernel.localversion: must be"),
    # --- patches and series ----------------------------------------------------------------
    ("patch-escapes",
     lambda c: c.series({"0001-x.patch": make_patch("../../etc/cron.d/x", "", "* * * * * root x\n")}),
     ["kernel"], 2, r"0001-x.patch:\d+: patch 0001-x.patch touches 'a/../../etc/cron.d/x', outside the source tree"),
    ("patch-absolute",
     lambda c: c.series({"0001-x.patch": "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n"}),
     ["kernel"], 2, r"touches '/etc/passwd', outside the source tree"),
    ("patch-symlink-abs", lambda c: c.series({"0001-x.patch": _symlink_patch("/etc/shadow")}), ["kernel"], 2,
     r"0001-x.patch:2: patch 0001-x.patch creates symlink drivers/xsc-link -> '/etc/shadow', an absolute path"),
    ("patch-symlink-out", lambda c: c.series({"0001-x.patch": _symlink_patch("../../../etc")}), ["kernel"], 2,
     r"creates symlink drivers/xsc-link -> '../../../etc', which leads out of the source tree"),
    ("patch-check-symlink", lambda c: c.series({"0001-x.patch": _symlink_patch("/etc/shadow")}),
     ["patches", "check", "--component", "kernel"], 2, r"creates symlink .* an absolute path"),
    ("patch-git-name", lambda c: c.series({"0001-x.patch": "diff --git a/../x b/../x\n--- a/y\n+++ b/y\n"
                                                           "@@ -1 +1 @@\n-a\n+b\n"}),
     ["kernel"], 2, r"touches 'a/../x', outside the source tree"),
    ("patch-index",
     lambda c: c.series({"0001-x.patch": "Index: /etc/passwd\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n"}),
     ["kernel"], 2, r"touches '/etc/passwd'"),
    ("patch-rename", lambda c: c.series({"0001-x.patch": "diff --git a/y b/y\nrename from y\nrename to ../y\n"}),
     ["kernel"], 2, r"touches '../y'"),
    ("series-missing-patch", lambda c: (c.project / "patches/kernel/series").write_text("0009-gone.patch\n"),
     ["kernel"], 2, r"series:1: patch 0009-gone.patch not found"),
    ("series-link-out", _series_link, ["kernel"], 2,
     r"series:2: patch 0002-link.patch is a symlink to .*canary/secret"),
    ("series-not-utf8", lambda c: (c.project / "patches/kernel/series").write_bytes(b"\xff\xfe.patch\n"),
     ["kernel"], 2, r"series: series file is not UTF-8"),
    ("series-option", lambda c: (c.project / "patches/kernel/series").write_text("0001-xsc.patch --reverse\n"),
     ["kernel"], 2, r"series:1: unsupported option '--reverse'"),
    ("series-name-escape", lambda c: (c.project / "patches/kernel/series").write_text("../../canary/secret\n"),
     ["kernel"], 2, r"series:1: patch name '../../canary/secret' must be a path inside"),
    ("fragment-not-utf8", lambda c: (c.project / "patches/kernel/xsc.config").write_bytes(b"CONFIG_\xff=y\n"),
     ["kernel"], 2, r"xsc.config: config fragment is not UTF-8"),
    # --- distros/debian.yaml ---------------------------------------------------------------
    ("overlay-abs-link", _overlay(lambda o: (o / "localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")),
     ["debian", "--no-smoke"], 2, r"distros/debian.yaml: overlay entry localtime: symlink to the absolute path"),
    ("overlay-dev", _overlay(lambda o: _write(o / "dev" / "sda", "x")),
     ["debian", "--no-smoke"], 2, r"overlay entry dev: nothing may go under /dev"),
    ("overlay-link-out", _overlay(lambda o: _link(o / "etc" / "x", "../../canary")),
     ["debian", "--no-smoke"], 2, r"overlay entry etc/x: symlink to '../../canary' leaves the root"),
    ("overlay-fifo", _overlay(lambda o: os.mkfifo(o / "pipe")), ["debian", "--no-smoke"], 2,
     r"overlay entry pipe: a device node, fifo or socket"),
    ("overlay-missing", lambda c: c.distro("debian", overlay="nowhere"), ["debian", "--no-smoke"], 2,
     r"distros/debian.yaml: overlay: 'nowhere' not found"),
    ("overlay-outside", lambda c: c.distro("debian", overlay="../canary"), ["debian", "--no-smoke"], 2,
     r"overlay: '../canary' resolves to .*, outside the project"),
    ("package-option", lambda c: c.distro("debian", packages=["live-boot", "systemd-sysv", "zstd=1.0,--hook=x"]),
     ["debian", "--no-smoke"], 2, r"packages: 'zstd=1.0,--hook=x': '1.0,--hook=x' is not a Debian version"),
    ("package-name", lambda c: c.distro("debian", packages=["live-boot", "systemd-sysv", "a,b"]),
     ["debian", "--no-smoke"], 2, r"packages: 'a,b' is not a Debian package name"),
    ("cmdline-quote", lambda c: c.distro("debian", cmdline="boot=live init='/bin/sh -c x'"),
     ["debian", "--no-smoke"], 2, r"cmdline: may not contain"),
    ("mirror-syntax", lambda c: c.distro("debian", mirror="http://a b"), ["debian", "--no-smoke"], 2,
     r"mirror: must be an http\(s\):// or file:// URI"),
    ("mirror-no-suite", lambda c: c.distro("debian", mirror="file:///nonexistent"), ["debian", "--no-smoke"], 2,
     r"has no suite 'bookworm'"),
    ("mirror-down", lambda c: c.distro("debian", mirror=f"http://127.0.0.1:{_free_port()}/debian"),
     ["debian", "--no-smoke"], 3, r"the Debian mirror http://127.0.0.1:\d+/debian is unreachable"),
    ("mirror-signature", _bad_signature, ["debian", "--no-smoke"], 2, r"InRelease: the signature does not verify"),
    ("mirror-arch", _no_arch, ["debian", "--no-smoke"], 2, r"suite bookworm on .* has no amd64 packages"),
    ("arch-not-configured", lambda c: c.distro("debian", arches=["x86_64"]),
     ["debian", "--arch", "riscv64", "--no-smoke"], 2, r"debian is not configured for riscv64 \(arches: x86_64\)"),
    ("arch-suite-lacks-it", lambda c: c.distro("debian", arches=["x86_64", "riscv64"], suites={"riscv64": "bookworm"}),
     ["debian", "--arch", "riscv64", "--no-smoke"], 2, r"suite bookworm on file://.* has no riscv64 packages"),
    ("arch-bios-mode", lambda c: None, ["debian", "--arch", "arm64", "--modes", "bios-cd"], 2,
     r"boot mode bios-cd: arm64 images boot in uefi-cd, uefi-usb; BIOS modes exist on x86_64 only"),
    ("arch-no-binfmt", _no_binfmt, ["debian", "--arch", "arm64", "--no-smoke"], 3,
     r"arm64 programs cannot run on this host: binfmt_misc is not mounted"),
    ("timezone-path", lambda c: c.distro("debian", timezone="/etc/shadow"), ["debian", "--no-smoke"], 2,
     r"timezone: must be a zoneinfo name"),
    ("keyring-outside", lambda c: c.distro("debian", keyring="/etc/passwd"), ["debian", "--no-smoke"], 2,
     r"keyring: '/etc/passwd' resolves to /etc/passwd, outside the project"),
    ("distro-not-mapping", lambda c: (c.project / "distros/debian.yaml").write_text("[1, 2]\n"),
     ["debian", "--no-smoke"], 2, r"debian.yaml: \(top level\): expected a mapping"),
    # --- kickstarts --------------------------------------------------------------------------
    ("ks-sandbox", _kickstart("# {{ ''.__class__.__mro__[1].__subclasses__() }}\n"), ["alma", "--no-smoke"], 2,
     r"el-live.ks.j2: refused by the template sandbox"),
    ("ks-include", _kickstart('{% include "../../canary/secret" %}\n'), ["alma", "--no-smoke"], 2,
     r"includes '../../canary/secret', which is not a template beside it"),
    ("ks-pre", _kickstart("%pre\ntouch /tmp/pwned\n%end\n"), ["alma", "--no-smoke"], 2,
     r"%pre \(line \d+\) would run on the build host"),
    ("ks-nochroot", _kickstart("%post --nochroot\ntouch /tmp/pwned\n%end\n"), ["alma", "--no-smoke"], 2,
     r"%post --nochroot \(line \d+\) would run on the build host"),
    ("ks-outside", lambda c: c.distro("alma", kickstart="../canary/secret"), ["alma", "--no-smoke"], 2,
     r"kickstart: '../canary/secret' resolves to .*, outside the project"),
    ("ks-repo-down", lambda c: c.distro("alma", repositories=[{"name": "baseos", "gpgcheck": False,
                                                              "baseurl": f"http://127.0.0.1:{_free_port()}/"}]),
     ["alma", "--no-smoke"], 3, r"repository 'baseos' of distros/alma.yaml is unreachable"),
    # --- command line ------------------------------------------------------------------------
    ("cli-profile-path", lambda c: None, ["kernel", "--profile", "../../etc/x"], 2,
     r"argument --profile: .*'../../etc/x' is not a profile name"),
    ("cli-modes", lambda c: None, ["debian", "--modes", "bios-floppy"], 2, r"boot mode\(s\) bios-floppy unknown"),
    ("cli-tests-none", lambda c: None, ["debian", "--tests", "xsc_version", "--no-smoke"], 2,
     r"--tests: no guest tests run here \(tests/guest does not exist\)"),
    ("cli-config-dir", lambda c: None, ["-c", "patches", "status"], 2, r"patches: is a directory, not a settings file"),
    ("cli-config-missing", lambda c: None, ["-c", "nope.yaml", "status"], 2, r"nope.yaml: settings file not found"),
    ("cli-unknown-distro", lambda c: None, ["test", "slackware"], 2, r"invalid choice: 'slackware'"),
    # --- build VMs ---------------------------------------------------------------------------
    ("vm-name-path", lambda c: None, ["vm", "start", "../x"], 2, r"VM name '../x': use 1 to 40 of"),
    ("vm-name-slash", lambda c: None, ["vm", "run", "a/b", "--", "true"], 2, r"VM name 'a/b'"),
    ("vm-unknown", lambda c: None, ["vm", "run", "nosuch", "--", "true"], 2, r"no VM named 'nosuch' \(VMs: none\)"),
    ("vm-no-command", lambda c: None, ["vm", "run", "b1"], 2, r"vm run: no command given"),
    ("vm-image-missing", lambda c: None, ["vm", "start", "b1"], 2,
     r"no disk image of debian for x86_64 in this project"),
    ("vm-image-file-missing", lambda c: None, ["vm", "start", "b1", "--image", "../canary/x.qcow2"], 2,
     r"--image ../canary/x.qcow2: no such file"),
    ("vm-port-taken", _port_held, ["vm", "start", "b1", "--port", "0"], 2, r"localhost port \d+ is taken"),
    ("vm-exists", lambda c: _vm_record(c, "b1", "stopped"), ["vm", "start", "b1"], 2,
     r"a VM named 'b1' exists \(stopped\)"),
    ("vm-run-stopped", lambda c: _vm_record(c, "b1", "stopped"), ["vm", "run", "b1", "--", "true"], 2,
     r"VM b1 is not running: it is stopped"),
    ("vm-run-dead", lambda c: _vm_record(c, "b1", "running"), ["vm", "copy-in", "b1", "isobuild.yaml", "/root"], 2,
     r"VM b1 is not running: its QEMU is gone \(dead\)"),
    ("vm-env-cpus", lambda c: c.monkeypatch.setenv("ISOBUILD_VM_CPUS", "lots"), ["vm", "start", "b1"], 2,
     r"ISOBUILD_VM_CPUS='lots': expected a whole number"),
    ("vm-disk-setting", lambda c: c.set(vm__disk="1G"), ["vm", "list"], 2,
     r"isobuild.yaml: vm: disk 1G is smaller than image_size 8G"),
    ("image-el", lambda c: None, ["image", "alma"], 2, r"disk images are made for Debian-family distros only"),
    ("pkg-unknown-source", lambda c: None, ["pkg", "build", "nosuch"], 2,
     r"source package nosuch not found in bookworm \(main\) on file://"),
    ("pkg-index-sha-mismatch", lambda c: None, ["pkg", "build", "tampered"], 2,
     r"source tampered 1.0: file://.*tampered_1.0.tar.xz has sha256 [0-9a-f]{64} \(\d+ bytes\); the signed index "
     r"says"),
    ("pkg-patch-does-not-apply", lambda c: _write_series(c, "patches/pkgs/tiny"), ["pkg", "build", "tiny"], 2,
     r"patch 0001-x.patch does not apply at fuzz 0 to tiny 1.0: .*hello.c"),
    ("pkg-list-syntax", lambda c: _write(c.project / "packages.list", "hello\nHello World\n"), ["pkg", "build"], 2,
     r"packages.list:2: 'Hello World': one package per line"),
    ("pkg-list-outside", lambda c: _write(c.project / "packages.list", "../canary/\n"), ["pkg", "build"], 2,
     r"packages.list: package list entry: '../canary/' resolves to .*canary, outside the project"),
    ("pkg-dsc-symlink", _symlinked_dsc, ["pkg", "build", "../canary/local_1.0.dsc"], 2,
     r"local_1.0.dsc: local_1.0.tar.xz is a symlink beside it"),
    ("pkg-list-empty", lambda c: None, ["pkg", "build"], 2, r"no packages named and .*packages.list lists none"),
    ("lock-version-gone", lambda c: _relock(c, {"base-files": ("12.3", "amd64"), "gone": ("1.0", "all")}),
     ["debian", "--no-smoke"], 2, r"distros/debian.lock: base-files 12.3 \(debian, amd64\) and 1 more is no longer "
     r"on the mirror's bookworm"),
    ("lock-packages-changed", lambda c: c.distro("debian", packages=["systemd-sysv", "live-boot", "initramfs-tools",
                                                                     "zstd", "less"]),
     ["debian", "--no-smoke"], 2, r"distros/debian.lock: debian amd64 was locked for bookworm:main "
     r"initramfs-tools,live-boot,systemd-sysv,zstd; distros/debian.yaml now asks for bookworm:main "
     r"initramfs-tools,less,live-boot,systemd-sysv,zstd"),
    ("lock-malformed", lambda c: _write(c.project / "distros" / "debian.lock", "debian amd64 libc6\n"),
     ["debian", "--no-smoke"], 2, r"distros/debian.lock:1: not 'ROOT ARCH PACKAGE VERSION PACKAGE-ARCH': "
     r"'debian amd64 libc6'"),
    ("hook-missing", lambda c: c.distro("debian", hooks=["hooks/nosuch.sh"]), ["debian", "--no-smoke"], 2,
     r"distros/debian.yaml: hooks: 'hooks/nosuch.sh' .*(not found|does not exist)"),
    ("hook-outside", lambda c: c.distro("debian", hooks=["../canary/secret"]), ["debian", "--no-smoke"], 2,
     r"distros/debian.yaml: hooks: '../canary/secret' resolves to .*canary/secret, outside the project"),
    ("lock-el", lambda c: None, ["lock", "alma"], 2, r"locks are made for Debian-family distros \(alma is el\)"),
    ("pkg-dsc-tampered", _tampered_dsc, ["pkg", "build", "../canary/local_1.0.dsc"], 2,
     r"local_1.0.dsc: local_1.0.tar.xz has sha256 [0-9a-f]{64}; the .dsc says"),
    ("pkg-shard", lambda c: None, ["pkg", "build", "tiny", "--shard", "3/2"], 2, r"--shard '3/2': expected I/N"),
    ("pkg-remove-unlisted", lambda c: None, ["pkg", "remove", "hello"], 2, r"packages.list: hello not listed"),
    ("pkg-local-packages-missing", lambda c: c.distro("debian", local_packages=["nosuch"]), ["image"], 2,
     r"debian.yaml: local_packages: nosuch not built for x86_64 \(built: nothing\)"),
    ("pkg-parallel-zero", lambda c: None, ["pkg", "build", "tiny", "-j", "0"], 2, r"-j/--parallel: expected"),
    # --- host faults -------------------------------------------------------------------------
    ("locked", _locked, ["kernel", "--force"], 3, r"is in use by another isobuild run"),
    ("no-quilt", _missing_tool, ["kernel", "--force"], 3, r"quilt not found: the kernel stage needs it"),
]


CASE_ARGV = {c[0]: c[2] for c in CASES}


@pytest.mark.parametrize(("name", "breaks", "argv", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it_and_changes_nothing(
        case: Case, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str,
        breaks: Break, argv: list[str], code: int, message: str) -> None:
    monkeypatch.setenv("PATH", os.environ["PATH"])  # cases may narrow it; restored afterwards
    monkeypatch.setenv("ISOBUILD_WORK_DIR", "")
    monkeypatch.delenv("ISOBUILD_WORK_DIR")
    good = _last_good(case)
    breaks(case)
    before = _snapshot(case.base)
    try:
        result = cli.main(argv) if argv[0] == "-c" else case.run(*argv)
    except SystemExit as exc:  # argparse's own errors
        result = int(exc.code or 0)
    finally:
        held = getattr(case, "held", None)
        if held is not None:
            held.__exit__(None, None, None)
    err = capsys.readouterr().err
    assert result == code, err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith(("isobuild: error:", "usage:")) or "error:" in x]
    assert any(re.search(message, x) for x in lines), f"no error line matches {message!r}:\n{err}"
    assert _snapshot(case.base) == before, "nothing outside the work and output dirs may change"
    assert _last_good(case) == good, "the last good kernel is still the current one"


def test_the_catalogue_is_big_enough() -> None:
    assert len(CASES) >= 40
