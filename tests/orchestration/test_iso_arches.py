"""UEFI-only ISOs (arm64, riscv64) and their QEMU command lines (builder.tools.iso9660,
builder.tools.bootmedia).

Fast and offline: the host has no arm64-efi or riscv64-efi GRUB modules, so a fake
``grub-mkimage`` (a real program on PATH that records its argv and writes a stand-in EFI
binary) takes the real one's place; mkfs.vfat, mtools, pycdlib, sgdisk and xorriso are real.
tests/real/test_real_iso_arches.py does the same with Debian's GRUB and boots the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from builder.infra import hosttools, runner
from builder.infra.arch import ARCHES, Arch
from builder.infra.errors import InfraError, UserError
from builder.tools import bootmedia, iso9660
from tests.orchestration.test_iso import gpt

EPOCH = 1_700_000_000
FILES = {"live/vmlinuz": b"kernel\n" * 100, "live/initrd.img": b"initrd\n" * 100, "README.txt": b"hello\n",
         "deep/er/file.bin": bytes(range(256)) * 10}
FOREIGN = ("arm64", "riscv64")

# Records its argv (one JSON line per call) next to itself; fails like the real one when a
# module is not in -d; writes "MZ" + the embedded config + the target as the EFI binary.
FAKE_GRUB_MKIMAGE = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.path.join(os.path.dirname(__file__), "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
opts = {{args[i]: args[i + 1] for i in range(0, 10, 2)}}
for module in args[10:]:
    if not os.path.exists(os.path.join(opts["-d"], module + ".mod")):
        sys.exit(f"grub-mkimage: error: cannot open `{{opts['-d']}}/{{module}}.mod'")
with open(opts["-c"], "rb") as cfg, open(opts["-o"], "wb") as out:
    out.write(b"MZ" + cfg.read() + opts["-O"].encode() + bytes(300_000))
"""


def install_fake_grub(bindir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake grub-mkimage in ``bindir``, first on PATH (its calls.jsonl lands there too)."""
    bindir.mkdir(parents=True, exist_ok=True)
    tool = bindir / "grub-mkimage"
    tool.write_text(FAKE_GRUB_MKIMAGE)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


@pytest.fixture
def fake_grub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return install_fake_grub(tmp_path / "fake-bin", monkeypatch)


def grub_modules(root: Path, arch: str) -> Path:
    """A stand-in for a target root's /usr/lib/grub/<target>: the modules iso9660 asks for."""
    directory = root / "usr" / "lib" / "grub" / ARCHES[arch].grub_target
    directory.mkdir(parents=True)
    for module in iso9660.GRUB_EFI_ONLY_MODULES:
        (directory / f"{module}.mod").write_bytes(b"\x7fELF")
    return directory


def spec(arch: str, grub_dir: Path | None, label: str = "ISOBUILD_EFI") -> iso9660.BootSpec:
    return iso9660.BootSpec(label, "live/vmlinuz", "live/initrd.img", "console=ttyS0,115200 x='a b'",
                            f"{arch} live", arch=arch, grub_dir=grub_dir)


def make_tree(root: Path) -> Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def master(tmp: Path, arch: str, out: Path, epoch: int = EPOCH, tree: Path | None = None) -> Path:
    tree = tree or make_tree(tmp / "tree")
    grub = tmp / "root" / "usr" / "lib" / "grub" / ARCHES[arch].grub_target
    if not grub.is_dir():
        grub_modules(tmp / "root", arch)
    iso9660.master(tree, out, spec(arch, grub), tmp / "work", tmp / "master.log", epoch)
    return out


@pytest.fixture(scope="module", params=FOREIGN)
def efi_iso(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(arch, the ISO, the fake grub-mkimage's dir), mastered once per arch."""
    arch = str(request.param)
    tmp = tmp_path_factory.mktemp(f"efi-{arch}")
    with pytest.MonkeyPatch.context() as mp:
        bindir = install_fake_grub(tmp / "bin", mp)
        image = master(tmp, arch, tmp / "out" / f"{arch}.iso")
    return arch, image, bindir


def read_back(image: Path, path: str) -> bytes:
    reader = pycdlib.PyCdlib()
    reader.open(str(image))
    try:
        buf = io.BytesIO()
        reader.get_file_from_iso_fp(buf, rr_path=path)
        return buf.getvalue()
    finally:
        reader.close()


def rr_files(image: Path) -> set[str]:
    reader = pycdlib.PyCdlib()
    reader.open(str(image))
    try:
        return {f"{d.rstrip('/')}/{f}" for d, _, files in reader.walk(rr_path="/") for f in files}
    finally:
        reader.close()




# --- grub.cfg and the GRUB module lists --------------------------------------------

def test_grub_cfg_per_arch() -> None:
    x86 = iso9660.grub_cfg(spec("x86_64", None))
    assert x86.startswith("serial --unit=0 --speed=115200\nterminal_input serial console\n"
                          "terminal_output serial console\nset default=0\nset timeout=1\n")
    for arch in FOREIGN:
        cfg = iso9660.grub_cfg(spec(arch, None))
        # U-Boot has no EFI serial protocol (`serial` fails on riscv64-efi); GRUB's clock is unreliable there
        assert cfg.startswith("set default=0\nset timeout=0\n\n"), cfg
        assert "serial" not in cfg and "terminal" not in cfg
        assert cfg.split("\n\n", 1)[1] == x86.split("\n\n", 1)[1].replace("x86_64 live", f"{arch} live")
        assert "\tlinux /live/vmlinuz console=ttyS0,115200 'x='\\''a' 'b'\\'''\n" in cfg


def test_every_arch_has_a_grub_platform() -> None:
    assert {a.grub_target for a in ARCHES.values()} <= set(iso9660.GRUB_PLATFORMS)
    assert iso9660.GRUB_PLATFORMS["x86_64-efi"].modules == iso9660.GRUB_MODULES
    for target in ("arm64-efi", "riscv64-efi"):
        modules = iso9660.GRUB_PLATFORMS[target].modules
        assert "efi_uga" not in modules, "riscv64-efi has no efi_uga: grub-mkimage would fail"
        assert "gzio" in modules, "riscv64's bindeb-pkg vmlinuz is Image.gz"
        assert {"linux", "iso9660", "search_label", "part_gpt", "configfile"} <= set(modules)


def test_has_bios_follows_the_arch_modes() -> None:
    assert iso9660.has_bios(ARCHES["x86_64"])
    assert not iso9660.has_bios(ARCHES["arm64"]) and not iso9660.has_bios(ARCHES["riscv64"])


# --- the UEFI-only ISO -------------------------------------------------------------------

def test_one_uefi_el_torito_entry_and_no_isolinux(efi_iso: tuple[str, Path, Path]) -> None:
    arch, image, _ = efi_iso
    info = iso9660.describe(image)
    assert info["label"] == "ISOBUILD_EFI" and info["rock_ridge"] and info["joliet"]
    assert (info["hybrid_mbr"], info["protective_mbr"], info["gpt"]) == (False, True, True)
    [entry] = info["eltorito"]
    assert (entry["platform"], entry["emulation"], entry["bootable"]) == ("uefi", "noemul", True)
    assert entry["load_size"] * 512 == len(read_back(image, "/boot/grub/efiboot.img")) < 32 << 20
    report = subprocess.run(["xorriso", "-indev", str(image), "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True)
    lines = (report.stdout + report.stderr).splitlines()
    imgs = [line.split(":", 1)[1].split() for line in lines if line.startswith("El Torito boot img :")]
    assert [(i[0], i[1], i[2], i[3]) for i in imgs] == [("1", "UEFI", "y", "none")]
    assert [line.split()[-1] for line in lines if line.startswith("El Torito img path :")] == [
        "/boot/grub/efiboot.img"]
    assert rr_files(image) == {f"/{rel}" for rel in FILES} | {
        "/boot/grub/grub.cfg", "/boot/grub/efiboot.img", "/boot/grub/boot.cat"}
    assert read_back(image, "/boot/grub/grub.cfg").decode() == iso9660.grub_cfg(spec(arch, None))


def test_esp_holds_grub_under_the_arch_name(efi_iso: tuple[str, Path, Path], tmp_path: Path) -> None:
    arch, image, bindir = efi_iso
    fat = tmp_path / "efiboot.img"
    fat.write_bytes(read_back(image, "/boot/grub/efiboot.img"))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-b", "-i", str(fat), "::/EFI/BOOT"], capture_output=True, text=True,
                             check=True, env=env).stdout
    name = ARCHES[arch].efi_boot_name
    assert listing.split() == [f"::/EFI/BOOT/{name}"]
    efi = subprocess.run(["mtype", "-i", str(fat), f"::/EFI/BOOT/{name}"], capture_output=True, check=True,
                         env=env).stdout
    assert efi.startswith(b"MZsearch --no-floppy --set=root --label ISOBUILD_EFI\n")
    call = json.loads((bindir / "calls.jsonl").read_text().splitlines()[0])  # the fixture's ISO
    target = ARCHES[arch].grub_target
    assert call[:6] == ["-O", target, "-d", str(image.parents[1] / "root" / "usr" / "lib" / "grub" / target),
                        "-p", "/boot/grub"]
    assert call[10:] == list(iso9660.GRUB_EFI_ONLY_MODULES)


def test_partition_tables_boot_it_as_a_disk(efi_iso: tuple[str, Path, Path]) -> None:
    _, image, _ = efi_iso
    data = image.read_bytes()
    assert len(data) % (1 << 20) == 0, "padded to whole MiB"
    assert data[:440] == bytes(440), "no MBR boot code: nothing boots it from BIOS"
    assert data[510:512] == b"\x55\xaa"
    mbr = [struct.unpack_from("<B3sB3sII", data, 446 + 16 * i) for i in range(4)]
    assert (mbr[0][0], mbr[0][2], mbr[0][4], mbr[0][5]) == (0x00, 0xEE, 1, len(data) // 512 - 1)
    assert all(m == (0, bytes(3), 0, bytes(3), 0, 0) for m in mbr[1:])
    result = subprocess.run(["sgdisk", "-v", str(image)], capture_output=True, text=True)
    assert result.returncode == 0 and "No problems found" in result.stdout, result.stdout + result.stderr
    primary = gpt(image, 1)
    backup = gpt(image, primary["backup"])
    assert primary["backup"] == len(data) // 512 - 1 and backup["backup"] == 1
    assert primary["header_crc_ok"] and primary["entries_crc_ok"] and backup["header_crc_ok"]
    assert backup["entries_crc_ok"] and primary["guid"] == backup["guid"] and primary["entries"] == backup["entries"]
    volume = struct.unpack_from("<I", data, 16 * 2048 + 80)[0] * 4
    assert volume <= primary["last"] + 1, "the backup GPT lies after the ISO9660 volume"
    table = subprocess.run(["sgdisk", "-p", str(image)], capture_output=True, text=True, check=True).stdout
    esp = [line.split() for line in table.splitlines() if re.match(r"\s+\d+\s", line)]
    [entry] = iso9660.describe(image)["eltorito"]
    assert [row[:3] + row[5:] for row in esp] == [
        ["1", str(entry["load_rba"] * 4), str(entry["load_rba"] * 4 + entry["load_size"] - 1), "EF00", "EFI", "boot"]]
    assert iso9660.efi_boot_image(image) == (entry["load_rba"] * 4, entry["load_size"])


def test_same_inputs_same_bytes(efi_iso: tuple[str, Path, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    arch, first, bindir = efi_iso
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    tree = make_tree(tmp_path / "tree")
    for path in tree.rglob("*"):
        os.utime(path, (EPOCH + 999, EPOCH + 999))
    again = master(tmp_path, arch, tmp_path / "elsewhere" / "other.iso", tree=tree)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest
    later = master(tmp_path, arch, tmp_path / "later.iso", epoch=EPOCH + 86400, tree=tree)
    assert hashlib.sha256(later.read_bytes()).hexdigest() != digest
    assert gpt(later, 1)["guid"] != gpt(first, 1)["guid"], "the GPT's GUIDs come from label and epoch"


def test_the_mastering_child_is_told_efi_only(fake_grub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    real_child = runner.in_child

    def record(func: Any, argv: Any, log_path: Path) -> None:
        argvs.append([str(a) for a in argv])
        real_child(func, argv, log_path)

    monkeypatch.setattr(runner, "in_child", record)
    master(tmp_path, "riscv64", tmp_path / "x.iso")
    [argv] = argvs
    assert argv[1:3] == ["-m", "builder.tools.iso9660"] and argv[-1] == "--efi-only"


# --- what is missing --------------------------------------------------------------------------

def test_a_grub_dir_without_modules_is_a_user_error(fake_grub: Path, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    empty = tmp_path / "root" / "usr" / "lib" / "grub" / "arm64-efi"
    empty.mkdir(parents=True)
    with pytest.raises(UserError) as err:
        iso9660.master(tree, tmp_path / "x.iso", spec("arm64", empty), tmp_path / "work", tmp_path / "log", EPOCH)
    assert str(empty) in err.value.message and "linux.mod" in err.value.message
    assert "grub-efi-arm64-bin" in (err.value.hint or "") and "target root" in (err.value.hint or "")
    assert not (tmp_path / "x.iso").exists()


def test_no_grub_dir_for_a_foreign_arch_names_the_spec_and_package(fake_grub: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iso9660, "HOST_GRUB_LIB", tmp_path / "host-grub")
    tree = make_tree(tmp_path / "tree")
    with pytest.raises(UserError) as err:
        iso9660.master(tree, tmp_path / "x.iso", spec("riscv64", None), tmp_path / "work", tmp_path / "log", EPOCH)
    assert f"{tmp_path}/host-grub/riscv64-efi/linux.mod not found" in err.value.message
    assert "BootSpec.grub_dir" in (err.value.hint or "") and "grub-efi-riscv64-bin" in (err.value.hint or "")


def test_no_host_grub_for_the_native_arch_is_an_infra_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iso9660, "HOST_GRUB_LIB", tmp_path / "host-grub")
    with pytest.raises(InfraError) as err:
        iso9660.grub_dir(spec("x86_64", None), ARCHES["x86_64"])
    assert "x86_64-efi/linux.mod not found" in err.value.message
    assert err.value.hint and err.value.hint.startswith("apt-get install grub-efi-amd64-bin")


def test_an_unknown_arch_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown architecture 'mips'"):
        iso9660.master(make_tree(tmp_path / "tree"), tmp_path / "x.iso", spec("mips", None), tmp_path / "work",
                       tmp_path / "log", EPOCH)


def test_partition_tables_need_an_el_torito_catalog(tmp_path: Path) -> None:
    plain = tmp_path / "plain.iso"
    plain.write_bytes(bytes(64 * 2048))
    with pytest.raises(InfraError, match="no El Torito boot record"):
        iso9660.write_partition_tables(plain, "L", EPOCH)


# --- booting: modes and QEMU command lines -----------------------------------------------------

COMMON = ["-m", "512", "-smp", "2", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
          "-serial", "stdio", "-no-reboot"]


@pytest.fixture
def firmware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for AAVMF (sparse, the 64 MiB virt wants), OpenSBI and U-Boot; returns their dir."""
    monkeypatch.delenv("ISOBUILD_QEMU_CPU", raising=False)
    for name in ("AAVMF_CODE.fd", "AAVMF_VARS.fd"):
        with (tmp_path / name).open("wb") as f:
            f.truncate(64 << 20)
    (tmp_path / "uboot.elf").write_bytes(b"\x7fELF")
    (tmp_path / "fw_jump.bin").write_bytes(b"sbi")
    monkeypatch.setattr(bootmedia, "AAVMF_CODE", tmp_path / "AAVMF_CODE.fd")
    monkeypatch.setattr(bootmedia, "AAVMF_VARS", tmp_path / "AAVMF_VARS.fd")
    monkeypatch.setattr(bootmedia, "UBOOT_RISCV64", tmp_path / "uboot.elf")
    return tmp_path


def test_modes_per_arch() -> None:
    assert ARCHES["x86_64"].modes == bootmedia.MODES
    assert bootmedia.modes(ARCHES["x86_64"]) == ("bios-cd", "bios-usb", "uefi-cd", "uefi-usb")
    assert bootmedia.modes(ARCHES["arm64"]) == ("uefi-cd", "uefi-usb")
    assert bootmedia.modes(ARCHES["riscv64"]) == ("uefi-disk",)


@pytest.mark.parametrize(("arch", "mode", "message"), [
    ("arm64", "bios-cd", "boot mode bios-cd: arm64 images boot in uefi-cd, uefi-usb; BIOS modes exist on x86_64 only"),
    ("riscv64", "bios-usb", "riscv64 images boot in uefi-disk; BIOS modes exist on x86_64 only"),
    ("riscv64", "uefi-cd", "riscv64 images boot in uefi-disk; uefi-cd exists on x86_64, arm64 only"),
    ("x86_64", "uefi-disk", "x86_64 images boot in bios-cd, bios-usb, uefi-cd, uefi-usb; uefi-disk exists on "
                            "riscv64 only"),
    ("arm64", "uefi-floppy", "arm64 images boot in uefi-cd, uefi-usb; uefi-floppy is no boot mode"),
])
def test_check_modes_refuses_what_the_arch_does_not_boot(arch: str, mode: str, message: str) -> None:
    bootmedia.check_modes(ARCHES[arch], list(bootmedia.modes(ARCHES[arch])))
    with pytest.raises(UserError) as err:
        bootmedia.check_modes(ARCHES[arch], [*bootmedia.modes(ARCHES[arch]), mode])
    assert message in err.value.message
    assert err.value.hint == f"choose among: {', '.join(bootmedia.modes(ARCHES[arch]))}"


def test_iso_argv_arm64(firmware: Path) -> None:
    arch, image, store = ARCHES["arm64"], Path("/srv/a,b.iso"), firmware / "vars.fd"
    head = ["qemu-system-aarch64", "-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a57", *COMMON]
    uefi = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware}/AAVMF_CODE.fd",
            "-drive", f"if=pflash,format=raw,unit=1,file={store}"]
    cd = ["-device", "virtio-scsi-pci,id=scsi",
          "-drive", "file=/srv/a,,b.iso,format=raw,media=cdrom,if=none,id=cd,readonly=on",
          "-device", "scsi-cd,bus=scsi.0,drive=cd,bootindex=0"]
    usb = ["-device", "qemu-xhci,id=xhci", "-drive", "file=/srv/a,,b.iso,format=raw,if=none,id=stick,readonly=on",
           "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]
    assert bootmedia.iso_argv(arch, "tcg", image, "uefi", "cd", 512, store) == head + uefi + cd
    assert bootmedia.iso_argv(arch, "tcg", image, "uefi", "usb", 512, store) == head + uefi + usb
    smoke = bootmedia.iso_argv(arch, "tcg", image, "uefi", "usb", 512, store, {"opt/isobuild/smoke": "1"})
    assert smoke == head + uefi + usb + ["-fw_cfg", "name=opt/isobuild/smoke,string=1"], "fw_cfg only"
    with pytest.raises(ValueError, match="writable copy"):
        bootmedia.iso_argv(arch, "tcg", image, "uefi", "cd", 512, None)
    with pytest.raises(UserError, match="BIOS modes exist on x86_64 only"):
        bootmedia.iso_argv(arch, "tcg", image, "bios", "cd", 512, None)


def riscv64(firmware: Path) -> Arch:
    """riscv64 with the stand-in OpenSBI as its -bios."""
    return dataclasses.replace(ARCHES["riscv64"], firmware=str(firmware / "fw_jump.bin"))


def test_iso_argv_riscv64(firmware: Path) -> None:
    opensbi = firmware / "fw_jump.bin"
    arch = riscv64(firmware)
    image = Path("/srv/live.iso")
    head = ["qemu-system-riscv64", "-accel", "tcg", "-machine", "virt", "-cpu", "rv64", *COMMON,
            "-bios", str(opensbi), "-kernel", f"{firmware}/uboot.elf"]
    disk = ["-drive", "file=/srv/live.iso,format=raw,if=none,id=disk,readonly=on",
            "-device", "virtio-blk-pci,drive=disk,bootindex=0"]
    assert bootmedia.iso_argv(arch, "tcg", image, "uefi", "disk", 512, None) == head + disk
    # the smoke test: a drive instead of -fw_cfg, which QEMU 7.2's riscv64 virt refuses
    smoke = bootmedia.iso_argv(arch, "tcg", image, "uefi", "disk", 512, None, {"opt/isobuild/smoke": "1"},
                               smoke_drive=Path("/tmp/s.img"))
    assert smoke == head + disk + ["-drive", "file=/tmp/s.img,format=raw,if=none,id=smoke",
                                   "-device", "virtio-blk-pci,drive=smoke,serial=isobuild-smoke"]
    assert bootmedia.SMOKE_DRIVE_SERIAL == "isobuild-smoke"
    with pytest.raises(ValueError, match="smoke drive"):
        bootmedia.iso_argv(arch, "tcg", image, "uefi", "disk", 512, None, {"opt/isobuild/smoke": "1"})
    with pytest.raises(UserError, match="riscv64 images boot in uefi-disk"):
        bootmedia.iso_argv(arch, "tcg", image, "uefi", "usb", 512, None)


def test_boot_argv_makes_the_files_of_one_boot(firmware: Path) -> None:
    smoke = {"opt/isobuild/smoke": "1"}
    with bootmedia.boot_argv(riscv64(firmware), "tcg", Path("/srv/x.iso"), "uefi", "disk", fw_cfg=smoke) as argv:
        drive = Path(argv[argv.index("virtio-blk-pci,drive=smoke,serial=isobuild-smoke") - 2].split(",")[0][5:])
        assert drive.read_bytes() == bytes(bootmedia.SMOKE_DRIVE_SIZE)
        assert "-fw_cfg" not in argv and "pflash" not in " ".join(argv)
    assert not drive.parent.exists(), "the boot's scratch dir is gone with the context"
    with bootmedia.boot_argv(ARCHES["arm64"], "tcg", Path("/srv/x.iso"), "uefi", "cd") as argv:
        store = Path(next(a for a in argv if "unit=1" in a).rsplit("file=", 1)[1])
        assert store.stat().st_size == 64 << 20 and store != firmware / "AAVMF_VARS.fd"
        assert "smoke" not in " ".join(argv)
    with pytest.raises(UserError), bootmedia.boot_argv(ARCHES["arm64"], "tcg", Path("/x.iso"), "bios", "usb"):
        pass


def test_missing_firmware_is_an_infra_error_naming_file_and_package(firmware: Path) -> None:
    image = Path("/srv/x.iso")
    (firmware / "uboot.elf").unlink()
    with pytest.raises(InfraError) as err:
        bootmedia.iso_argv(riscv64(firmware), "tcg", image, "uefi", "disk", 512, None)
    assert f"{firmware}/uboot.elf not found" in err.value.message
    assert (err.value.hint or "").startswith("apt-get install u-boot-qemu")
    (firmware / "fw_jump.bin").unlink()
    with pytest.raises(InfraError) as err:
        bootmedia.iso_argv(riscv64(firmware), "tcg", image, "uefi", "disk", 512, None)
    assert f"{firmware}/fw_jump.bin not found" in err.value.message
    assert (err.value.hint or "").startswith("apt-get install opensbi")
    (firmware / "AAVMF_VARS.fd").unlink()
    with pytest.raises(InfraError) as err:
        bootmedia.uefi_vars(ARCHES["arm64"])
    assert f"{firmware}/AAVMF_VARS.fd not found" in err.value.message
    assert (err.value.hint or "").startswith("apt-get install qemu-efi-aarch64")
    (firmware / "AAVMF_VARS.fd").write_bytes(b"2 MiB? no")
    with pytest.raises(InfraError, match=r"AAVMF_VARS\.fd is 9 bytes; QEMU's virt board takes flash images of exactly"):
        bootmedia.iso_argv(ARCHES["arm64"], "tcg", image, "uefi", "cd", 512, firmware / "copy.fd")


def test_debian_aavmf_and_uboot_are_found() -> None:
    # the set-up installs every tool in the doctor table; a missing one must fail, not skip
    fw = bootmedia.aavmf()
    assert fw.code.stat().st_size == fw.vars.stat().st_size == 64 << 20
    assert bootmedia.uboot_riscv64().read_bytes()[:4] == b"\x7fELF"


def test_the_doctor_table_installs_the_firmware() -> None:
    rows = {tool.name: tool.package for tool in hosttools.TOOLS}
    assert rows[str(bootmedia.AAVMF_CODE)] == "qemu-efi-aarch64"
    assert rows[str(bootmedia.UBOOT_RISCV64)] == "u-boot-qemu"
    assert rows[str(ARCHES["riscv64"].firmware)] == "opensbi"
