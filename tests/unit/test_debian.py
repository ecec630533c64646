"""The Debian plugin, the rootfs/smoke stage logic and the distro registry."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder import distros
from builder.distros.debian import DebianPlugin, DebianSettings
from builder.infra import schema
from builder.infra.config import Project, Settings
from builder.infra.errors import CheckFailed, InfraError, UserError
from builder.stages import rootfs, smoke
from builder.tools import console

REPO = Path(__file__).resolve().parents[2]
MIRROR = "http://mirror.invalid/archive"


def project(tmp_path: Path, distro_yaml: str | None = None) -> Project:
    (tmp_path / "distros").mkdir(exist_ok=True)
    if distro_yaml is not None:
        (tmp_path / "distros" / "debian.yaml").write_text(distro_yaml)
    return Project(tmp_path, tmp_path / "isobuild.yaml", Settings(work_dir=str(tmp_path / "work")))


def test_repository_distro_file_is_valid() -> None:
    p = Project(REPO, REPO / "isobuild.yaml", Settings())
    plugin = distros.load(p, "debian")
    assert isinstance(plugin, DebianPlugin)
    # the file spells out the defaults, and builds the images of every arch
    assert plugin.settings == DebianSettings(arches=["x86_64", "arm64", "riscv64"])
    assert plugin.layout().label == "ISOBUILD_DEBIAN"


@pytest.mark.parametrize(("text", "message"), [
    ("label: isobuild\n", "debian.yaml: label: must be 1 to 16 of A-Z 0-9 _"),
    ("label: ABCDEFGHIJKLMNOPQ\n", "debian.yaml: label: must be 1 to 16"),
    ("lable: X\n", "debian.yaml: lable: unknown key"),
    ("bootstrap: cdebootstrap\n", "debian.yaml: bootstrap: expected one of 'mmdebstrap', 'debootstrap'"),
    ("timezone: Europe/Paris\n", "timezone 'Europe/Paris' needs 'tzdata' in packages"),
    ("locale: de_DE.UTF-8\n", "locale 'de_DE.UTF-8' needs 'locales' in packages"),
    ("ssh_authorized_key: ssh-ed25519 AAAA me\n", "ssh_authorized_key needs 'openssh-server' in packages"),
    ("packages: [live-boot, systemd-sysv, 'Bad Name']\n", "packages: 'Bad Name' is not a Debian package name"),
    ("packages: [zstd]\n", "packages must include live-boot and systemd-sysv"),
    ("mirror: ftp.example\n", "debian.yaml: mirror: must be an http(s):// or file:// URI"),
    ("family: arch\n", "debian.yaml: family: 'arch' is not one of debian"),
])
def test_bad_distro_settings_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError) as exc:
        distros.load(project(tmp_path, text), "debian")
    assert message in exc.value.message


def test_unknown_distro_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown distro 'slackware'") as exc:
        distros.load(project(tmp_path, "family: debian\n"), "slackware")
    assert exc.value.hint == "known distros: debian"


def test_bootstrap_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = distros.load(project(tmp_path, f"mirror: {MIRROR}\ncomponents: [main, contrib]\n"), "debian")
    out, cache = tmp_path / "root.tar", tmp_path / "cache"
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert plugin.bootstrap_argv(out, cache) == [  # type: ignore[attr-defined]
        "mmdebstrap", "--mode=root", "--variant=minbase", "--components=main,contrib",
        "--include=systemd-sysv,live-boot,initramfs-tools,zstd", f"--keyring={keyring}",
        '--aptopt=Acquire::Retries "3"', '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
        f"--setup-hook=sync-in {cache} /var/cache/apt/archives",
        '--setup-hook=chown -R 0:0 "$1"/var/cache/apt/archives',
        f"--customize-hook=sync-out /var/cache/apt/archives {cache}", "bookworm", str(out), MIRROR]
    monkeypatch.setattr("os.geteuid", lambda: 1000)  # an ordinary user: mmdebstrap's unshare mode
    assert plugin.bootstrap_argv(out, cache)[1] == "--mode=unshare"  # type: ignore[attr-defined]
    plugin.settings.bootstrap = "debootstrap"
    assert plugin.bootstrap_argv(out, cache) == [  # type: ignore[attr-defined]
        "debootstrap", "--variant=minbase", "--components=main,contrib",
        "--include=systemd-sysv,live-boot,initramfs-tools,zstd", f"--keyring={keyring}", f"--cache-dir={cache}",
        "bookworm", str(out), MIRROR]


def test_default_mirror_comes_from_the_host(tmp_path: Path) -> None:
    from builder.tools import aptsources

    plugin = distros.load(project(tmp_path, "family: debian\n"), "debian")
    assert plugin.mirror() == aptsources.default_mirror("bookworm")  # type: ignore[attr-defined]


def test_identity_follows_the_overlay_content(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc/motd").write_text("hello\n")
    p = project(tmp_path, f"mirror: {MIRROR}\noverlay: overlay\n")
    first = distros.load(p, "debian").identity()
    (overlay / "etc/motd").write_text("changed\n")
    second = distros.load(p, "debian").identity()["overlay"]
    assert second != first["overlay"]
    os.chmod(overlay / "etc/motd", 0o600)
    assert distros.load(p, "debian").identity()["overlay"] not in (first["overlay"], second)
    with pytest.raises(UserError, match=r"overlay: 'nowhere' not found"):
        distros.load(project(tmp_path, f"mirror: {MIRROR}\noverlay: nowhere\n"), "debian").identity()






def test_squashfs_argv_is_reproducible() -> None:
    argv = rootfs.squashfs_argv(Path("/r"), Path("/o.sq"), "zstd", 3)
    assert argv == ["mksquashfs", "/r", "/o.sq", "-noappend", "-comp", "zstd", "-no-progress",
                    "-Xcompression-level", "3", "-e", "boot"]
    assert rootfs.squashfs_env(1700000000) == {"SOURCE_DATE_EPOCH": "1700000000"}
    # no level: zstd gets 9 (measured: 6x faster than mksquashfs's 15), the others the tool's own default
    assert rootfs.squashfs_argv(Path("/r"), Path("/o.sq"), "zstd", None)[-4:-2] == ["-Xcompression-level", "9"]
    assert "-Xcompression-level" not in rootfs.squashfs_argv(Path("/r"), Path("/o.sq"), "xz", None)


def test_parse_modes() -> None:
    assert smoke.parse_modes("bios-cd, uefi-usb") == ["bios-cd", "uefi-usb"]
    with pytest.raises(UserError, match=r"boot mode\(s\) bios-floppy unknown"):
        smoke.parse_modes("bios-cd,bios-floppy")


def verdict(mode: str, status: str, reasons: list[str] | None = None) -> console.Verdict:
    v = console.Verdict(status, reasons or [], {"UNAME": "6.1"}, [], ["tail line"], 12.5, f"/logs/{mode}.log")
    v.extra["mode"] = mode
    return v


def test_junit_and_exit_codes_per_verdict() -> None:
    verdicts = [verdict("bios-cd", "pass"), verdict("uefi-usb", "fail", ["timed out"]),
                verdict("bios-usb", "error", ["QEMU failed to start (exit 1)"])]
    suite = ET.fromstring(smoke.junit("debian", verdicts))
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["uefi-usb"].find("failure").get("message") == "timed out"  # type: ignore[union-attr]
    assert cases["bios-usb"].find("error") is not None and cases["bios-cd"].find("failure") is None
    with pytest.raises(CheckFailed, match="boot check failed in uefi-usb: timed out"):
        smoke.raise_for(verdicts)
    with pytest.raises(InfraError, match="could not run in bios-usb"):
        smoke.raise_for(verdicts[::2])
    smoke.raise_for(verdicts[:1])


def busybox_root(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (root / "bin/busybox").chmod(0o755)
    (root / "bin/sh").symlink_to("busybox")
    return root






def test_distro_settings_describe_every_key() -> None:
    keys = [k for k, _, _ in schema.describe(DebianSettings)]
    assert {"suite", "mirror", "bootstrap", "label", "cmdline", "squashfs.compression", "overlay"} <= set(keys)


def test_clean_keeps_the_last_good_rootfs_and_drops_the_rest(tmp_path: Path) -> None:
    from builder.commands import clean
    from builder.infra import atomic

    distro = tmp_path / "distros" / "debian"
    for key in ("good", "old", ".root-abandoned"):
        (distro / "rootfs" / key).mkdir(parents=True)
    (distro / "iso-work").mkdir()
    atomic.write_json(distro / "state" / "rootfs.json", {"last_good": "good"})
    removed = [p.name for p, _ in clean.clean(tmp_path)]
    assert sorted(removed) == [".root-abandoned", "iso-work", "old"]
    assert (distro / "rootfs" / "good").is_dir() and (distro / "state" / "rootfs.json").exists()


