"""Cross builds on the fake kernel tree: ``--arch arm64|riscv64`` with fake cross compilers first on
PATH (each logs that it ran), the arch in every key, tree, record and status row; the bad input of
the arch issue, each a one-line error with its exit code.  Real quilt, tar, make and dpkg-deb."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from builder.infra import arch as arch_mod
from builder.infra.errors import CheckFailed, ExitCode, InfraError, UserError
from builder.tools import aptrepo, busybox, console, qemu
from tests.conftest import FakeProject
from tests.fakemirror import Mirror


def first_error_line(err: str) -> str:
    return next((line for line in err.splitlines() if line.startswith("isobuild: error:")), "")


@pytest.fixture
def cross_gcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake aarch64/riscv64 cross compilers first on PATH; each appends its name to calls.log."""
    bin_dir = tmp_path / "cross-bin"
    bin_dir.mkdir()
    for triplet in ("aarch64-linux-gnu", "riscv64-linux-gnu"):
        tool = bin_dir / f"{triplet}-gcc"
        tool.write_text(f"#!/bin/sh\necho {triplet}-gcc >> {bin_dir}/calls.log\n"
                        f"echo '{triplet}-gcc (fake cross) 12.2.0'\n")
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_arm64_cross_build_has_its_own_key_tree_record_and_toolchain(
        fake_project: FakeProject, cross_gcc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    x86 = json.loads((fake_project.current("kernel-ci-x86_64") / "metadata.json").read_text())
    assert fake_project.run("kernel", "--arch", "arm64") == 0
    current = fake_project.current("kernel-ci-arm64")
    meta = json.loads((current / "metadata.json").read_text())
    assert (current / "Image").is_file() and not (current / "bzImage").exists()
    assert meta["arch"] == "arm64" and meta["inputs"]["arch"] == "arm64"
    assert meta["cross_compile"] == "aarch64-linux-gnu-" and meta["make_env"]["CROSS_COMPILE"] == "aarch64-linux-gnu-"
    assert meta["toolchain"] == "aarch64-linux-gnu-gcc (fake cross) 12.2.0" and meta["make_env"]["ARCH"] == "arm64"
    assert meta["key"] != x86["key"] and x86["cross_compile"] == ""
    # every object went through the cross compiler, and the image says so
    assert (cross_gcc / "calls.log").read_text().split().count("aarch64-linux-gnu-gcc") >= 3
    assert b"/* cc: aarch64-linux-gnu-gcc */" in (current / "Image").read_bytes()
    trees = fake_project.work / "kernel" / "trees"
    assert {p.name for p in trees.iterdir()} == {"ci-x86_64", "ci-arm64"}
    assert fake_project.record_path("kernel-ci-arm64").is_file()
    assert "--arch arm64" in meta["reproducer"]["isobuild"]
    # nothing rebuilt for either arch on a second run; status shows both, each row with its arch
    capsys.readouterr()
    assert fake_project.run("kernel", "--arch", "arm64") == 0
    assert "is up to date" in capsys.readouterr().out
    assert fake_project.run("status", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    kernels = {(r["arch"], r["state"]) for r in rows if r["stage"] == "kernel"}
    assert kernels == {("x86_64", "built"), ("arm64", "built")}
    assert fake_project.run("status", "--json", "--arch", "arm64") == 0
    only = json.loads(capsys.readouterr().out)
    assert {r["arch"] for r in only} == {"arm64"} and {r["stage"] for r in only} == {"kernel", "kernel-boot"}


def test_riscv64_cross_build_uses_arch_riscv(fake_project: FakeProject, cross_gcc: Path) -> None:
    assert fake_project.run("kernel", "--arch", "riscv64") == 0
    meta = json.loads((fake_project.current("kernel-ci-riscv64") / "metadata.json").read_text())
    assert meta["make_env"]["ARCH"] == "riscv" and meta["cross_compile"] == "riscv64-linux-gnu-"
    assert "Image" in meta["artifacts"]


def test_arch_setting_in_the_project_file(fake_project: FakeProject, cross_gcc: Path) -> None:
    fake_project.write_settings({**fake_project.settings(), "arch": "riscv64"})
    assert fake_project.run("kernel") == 0
    assert fake_project.current("kernel-ci-riscv64").is_dir()


def test_unknown_arch_names_the_known_ones(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fake_project.run("kernel", "--arch", "mips")
    assert exc.value.code == ExitCode.USER
    err = capsys.readouterr().err
    assert "unknown architecture 'mips'" in err and "x86_64, arm64, riscv64" in err
    fake_project.write_settings({**fake_project.settings(), "arch": "mips"})
    assert fake_project.run("status") == ExitCode.USER
    err = first_error_line(capsys.readouterr().err)
    assert "isobuild.yaml" in err and "arch" in err and "'mips'" in err


def test_option_of_another_arch_fails_naming_it_and_the_arch(
        fake_project: FakeProject, cross_gcc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake_project.root / "patches/kernel/xsc.config").write_text("CONFIG_FAKE_XSC=y\nCONFIG_FAKE_X86_ONLY=y\n")
    assert fake_project.run("kernel") == 0  # on x86_64 it exists
    assert fake_project.run("kernel", "--arch", "arm64") == ExitCode.USER
    err = capsys.readouterr().err
    assert "did not land in the arm64 .config: CONFIG_FAKE_X86_ONLY" in first_error_line(err)
    assert "defined only under other architectures, not arm64: arch/x86/Kconfig:2 (architecture x86)" in err
    assert not fake_project.record_path("kernel-ci-arm64").exists() or \
        fake_project.record("kernel-ci-arm64")["status"] != "ok"


def test_profile_without_the_arch_is_refused(fake_project: FakeProject, cross_gcc: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (fake_project.root / "profiles/kernel/ci.yaml").write_text(
        "base: tinyconfig\nfragments: []\narches:\n  x86_64: [ci.config]\n  arm64: [ci.config]\n")
    assert fake_project.run("kernel", "--arch", "arm64") == 0
    assert fake_project.run("kernel", "--arch", "riscv64") == ExitCode.USER
    err = first_error_line(capsys.readouterr().err)
    assert "kernel profile 'ci' has no fragments for riscv64" in err and "arches" in err


def test_missing_cross_compiler_names_its_package(fake_project: FakeProject, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A PATH with every host command but the aarch64 cross compiler."""
    farm = tmp_path / "no-cross"
    farm.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for entry in Path(directory).iterdir():
            if not entry.name.startswith("aarch64-linux-gnu-") and not (farm / entry.name).exists():
                (farm / entry.name).symlink_to(entry)
    monkeypatch.setenv("PATH", str(farm))
    assert fake_project.run("kernel", "--arch", "arm64") == ExitCode.INFRA
    err = capsys.readouterr().err
    assert "aarch64-linux-gnu-gcc not found: building the arm64 kernel needs it" in first_error_line(err)
    assert "apt-get install gcc-aarch64-linux-gnu" in err
    assert not (fake_project.work / "kernel" / "trees" / "ci-arm64").exists(), "refused before any build"


def test_missing_firmware_is_refused_before_the_build(fake_project: FakeProject, cross_gcc: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    gone = dataclasses.replace(arch_mod.ARCHES["riscv64"], firmware="/nonexistent/fw_jump.bin")
    monkeypatch.setitem(arch_mod.ARCHES, "riscv64", gone)
    assert fake_project.run("kernel", "--arch", "riscv64", "--boot") == ExitCode.INFRA
    err = capsys.readouterr().err
    assert "/nonexistent/fw_jump.bin not found: booting riscv64 needs it as QEMU firmware" in first_error_line(err)
    assert "apt-get install opensbi" in err
    assert not (fake_project.work / "kernel" / "trees" / "ci-riscv64").exists(), "refused before any build"


# --- busybox for a foreign arch, from a signed archive -----------------------------------------

def static_elf(machine: int) -> bytes:
    """A minimal ELF64 executable header for ``machine`` with one PT_LOAD and no PT_INTERP."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0x400000, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 120, 120, 0x1000)
    return header + phdr


def busybox_deb(tmp_path: Path, machine: int, arch: str, member: str = "usr/bin/busybox") -> bytes:
    root = tmp_path / f"pkg-{arch}-{machine}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: busybox-static\nVersion: 1:1.37.0-6\nArchitecture: {arch}\n"
                                             "Maintainer: t <t@test.invalid>\nDescription: fake\n")
    (root / member).parent.mkdir(parents=True)
    (root / member).write_bytes(static_elf(machine))
    (root / member).chmod(0o755)
    out = tmp_path / f"busybox-{arch}-{machine}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True, capture_output=True)
    return out.read_bytes()


def test_foreign_busybox_comes_verified_from_the_archive_and_is_cached(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = Mirror.create(tmp_path / "mirror")
    mirror.add_deb("trixie", "riscv64", "busybox-static", "1:1.37.0-6", busybox_deb(tmp_path, 243, "riscv64"))
    uri = mirror.publish("trixie", architectures="amd64 arm64 riscv64")
    cache = tmp_path / "cache"
    got = busybox.for_arch(arch_mod.ARCHES["riscv64"], uri, "trixie", cache, keyring=mirror.keyring)
    assert got.read_bytes() == static_elf(243)
    assert busybox.elf_machine(got.read_bytes()) == 243
    # the same signed InRelease: the package verified for it, without reading the index again

    def no_index(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Packages index was read again for an unchanged InRelease")

    monkeypatch.setattr(aptrepo, "deb", no_index)
    assert busybox.for_arch(arch_mod.ARCHES["riscv64"], uri, "trixie", cache, keyring=mirror.keyring) == \
        got.resolve()
    monkeypatch.undo()
    # the mirror unreachable (nothing listens on loopback's discard port): the last one verified
    offline = "http://127.0.0.1:9/debian"
    assert busybox.for_arch(arch_mod.ARCHES["riscv64"], offline, "trixie", cache, keyring=mirror.keyring) == \
        got.resolve()
    with pytest.raises(InfraError, match="unreachable"):  # no earlier one for arm64
        busybox.for_arch(arch_mod.ARCHES["arm64"], offline, "bookworm", cache, keyring=mirror.keyring)


def test_busybox_with_a_wrong_sha256_is_refused_and_nothing_cached(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = Mirror.create(tmp_path / "mirror")
    pool = mirror.add_deb("bookworm", "arm64", "busybox-static", "1:1.35.0-4", busybox_deb(tmp_path, 183, "arm64"))
    uri = mirror.publish("bookworm")
    pool.write_bytes(pool.read_bytes() + b"tampered")  # the pool file no longer matches the signed index
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"busybox-static .*sha256 .* the signed index says .* refused, nothing cached"):
        busybox.for_arch(arch_mod.ARCHES["arm64"], uri, "bookworm", cache, keyring=mirror.keyring)
    assert not (cache / "pool").exists() or not list((cache / "pool").rglob("*"))
    assert not (cache / "busybox").exists()


def test_busybox_of_the_wrong_arch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = Mirror.create(tmp_path / "mirror")
    mirror.add_deb("bookworm", "arm64", "busybox-static", "1:1.35.0-4", busybox_deb(tmp_path, 62, "arm64"))
    uri = mirror.publish("bookworm")
    with pytest.raises(UserError, match=r"busybox-static \(bookworm, arm64\): not an executable for arm64"):
        busybox.for_arch(arch_mod.ARCHES["arm64"], uri, "bookworm", tmp_path / "cache", keyring=mirror.keyring)
    assert not list((tmp_path / "cache" / "busybox").glob("*/busybox"))


def test_suite_without_the_arch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = Mirror.create(tmp_path / "mirror")
    mirror.add_deb("bookworm", "arm64", "busybox-static", "1:1.35.0-4", busybox_deb(tmp_path, 183, "arm64"))
    uri = mirror.publish("bookworm")  # amd64 arm64: no riscv64, like the real bookworm
    with pytest.raises(UserError, match=r"suite bookworm .* has no riscv64 packages"):
        busybox.for_arch(arch_mod.ARCHES["riscv64"], uri, "bookworm", tmp_path / "cache", keyring=mirror.keyring)


# --- a guest that hangs: real QEMU of each arch, a "kernel" that loops forever ------------------

# an endless loop in each arch's machine code: AArch64 `b .`, RISC-V `j .`
LOOP = {"arm64": struct.pack("<I", 0x14000000), "riscv64": struct.pack("<I", 0x0000006F)}


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_a_hung_guest_times_out_with_its_console_tail(arch: str, tmp_path: Path) -> None:
    target = arch_mod.ARCHES[arch]
    kernel = tmp_path / "Image"
    kernel.write_bytes(LOOP[arch] * 1024)
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(b"\0" * 512)
    argv = qemu.kernel_argv(target, kernel, initrd, f"console={target.console}", 128, "tcg")
    expect = console.Expect({"UNAME": "6.1", "MARKER": r"\d+"})
    verdict = qemu.watch(argv, expect, tmp_path / "console.log", timeout=8)
    assert verdict.status == "fail" and verdict.reasons[0] == "timed out before the guest finished its checks"
    assert "marker UNAME not reported" in verdict.reasons
    if arch == "riscv64":  # OpenSBI ran and handed over to the "kernel": the tail shows how far it got
        assert any(line.startswith("Domain0 Boot HART") for line in verdict.tail), verdict.tail
    with pytest.raises(CheckFailed) as exc:
        console.raise_for([verdict], f"the {arch} kernel")
    assert exc.value.exit_code == ExitCode.CHECK_FAILED and "timed out" in exc.value.message
    assert any(detail.startswith("full console log:") for detail in exc.value.details)
