"""ISO mastering (builder.tools.iso9660) and ISO boot command lines (builder.tools.bootmedia).

Fast: real grub-mkimage, mkfs.vfat, mtools and pycdlib on a tree of dummy
files (about a second per ISO), no QEMU.  The ISO is checked with pycdlib,
xorriso and sgdisk rather than with our own reader alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from builder.infra import runner
from builder.infra.arch import ARCHES
from builder.infra.errors import InfraError, UserError
from builder.tools import bootmedia, iso9660

EPOCH = 1_700_000_000
SPEC = iso9660.BootSpec("ISOBUILD_UNIT", "live/vmlinuz", "live/initrd.img",
                    "console=ttyS0,115200 panic=-1 x='a b' $y", "Unit test ISO")
# Two names that mangle to the same ISO9660 name, a name too long for ISO9660
# and Joliet, non-ASCII, a dot file, a nested directory and a symlink.
LONG = "A very long file name with spaces, ünïcode and more words than Joliet's 64 characters.txt"
FILES = {
    "live/vmlinuz": 70_000, "live/initrd.img": 30_000, "live/filesystem.squashfs": 5_000,
    "foo-bar.txt": 10, "foo_bar.txt": 11, LONG: 12, ".disk/info": 13, "deep/er/still/file.tar.gz": 14,
}


def make_tree(root: Path) -> Path:
    rng = random.Random(7)  # the same bytes every run: hashes are comparable
    for rel, size in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.randbytes(size))
    (root / "vmlinuz").symlink_to("live/vmlinuz")
    return root


def master(tmp: Path, tree: Path, out: Path, spec: iso9660.BootSpec = SPEC, epoch: int = EPOCH) -> Path:
    iso9660.master(tree, out, spec, tmp / "work", tmp / "master.log", epoch)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One ISO shared by the read-only checks: (tree, iso)."""
    tmp = tmp_path_factory.mktemp("iso")
    tree = make_tree(tmp / "tree")
    return tree, master(tmp, tree, tmp / "out" / "unit.iso")


def read_back(image: Path, **path: str) -> bytes:
    reader = pycdlib.PyCdlib()
    reader.open(str(image))
    try:
        buf = io.BytesIO()
        reader.get_file_from_iso_fp(buf, **path)
        return buf.getvalue()
    finally:
        reader.close()


def walk(image: Path, **root: str) -> set[str]:
    """Every file path under one namespace (iso_path, rr_path or joliet_path)."""
    reader = pycdlib.PyCdlib()
    reader.open(str(image))
    try:
        return {f"{d.rstrip('/')}/{f}" for d, _, files in reader.walk(**root) for f in files}
    finally:
        reader.close()


# --- labels, names, configs: pure functions -----------------------------------

@pytest.mark.parametrize("label", ["", "lower", "WITH SPACE", "DASH-ED", "A" * 17, "ÜMLAUT"])
def test_invalid_label_is_a_user_error_naming_it(label: str) -> None:
    with pytest.raises(UserError) as err:
        iso9660.validate_label(label)
    assert repr(label) in err.value.message and "A-Z, 0-9 and _" in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize("label", ["A", "DEBIAN_12_LIVE", "X" * 16, "0_9"])
def test_valid_labels(label: str) -> None:
    iso9660.validate_label(label)


def test_iso9660_names_are_d1_characters_and_unique() -> None:
    names = iso9660.iso9660_names({"foo-bar.txt": False, "foo_bar.txt": False, "FOO_BAR.TXT": False, "live": True,
                               "vmlinuz": False, LONG: False, ".bashrc": False, "x" * 40: True,
                               "archive.tar.gz": False, "filesystem.squashfs": False})
    assert names["foo-bar.txt"] == "FOO_BAR_1.TXT;1"  # sorted: FOO_BAR.TXT, foo-bar.txt, foo_bar.txt
    assert names["FOO_BAR.TXT"] == "FOO_BAR.TXT;1"
    assert names["foo_bar.txt"] == "FOO_BAR_2.TXT;1"
    assert names["live"] == "LIVE" and names["vmlinuz"] == "VMLINUZ.;1" and names[".bashrc"] == ".BASHRC;1"
    assert names["filesystem.squashfs"] == "FILESYSTEM.SQUASHFS;1"
    assert names["archive.tar.gz"] == "ARCHIVE_TAR.GZ;1"
    assert len(names["x" * 40]) == 31
    for real, name in names.items():
        stem = name.removesuffix(";1")
        assert re.fullmatch(r"[A-Z0-9_]*(\.[A-Z0-9_]*)?", stem), name
        assert len(stem.replace(".", "")) <= 31 if real == "x" * 40 else len(stem.replace(".", "", 1)) <= 30
    assert len(set(names.values())) == len(names)


def test_iso9660_names_resolve_a_clash_at_full_length() -> None:
    a, b = "n" * 40 + "-1.txt", "n" * 40 + "_1.txt"
    names = iso9660.iso9660_names({a: False, b: False})
    assert len({names[a], names[b]}) == 2
    assert all(len(n.removesuffix(";1")) <= 31 for n in names.values())


def test_joliet_names_fit_64_bytes_and_are_unique_ignoring_case() -> None:
    names = iso9660.joliet_names([LONG, LONG.upper(), "a:b?c", "plain.txt"])
    assert names["plain.txt"] == "plain.txt" and names["a:b?c"] == "a_b_c"
    assert names[LONG].endswith(".txt") and len(names[LONG].encode()) <= 64
    assert names[LONG].upper() != names[LONG.upper()].upper()


def test_boot_configs_boot_the_spec_on_the_serial_console() -> None:
    cfg = iso9660.isolinux_cfg(SPEC).splitlines()
    assert cfg[0] == "SERIAL 0 115200", "SERIAL must be the first directive"
    assert "PROMPT 0" in cfg and "  LINUX /live/vmlinuz" in cfg and "  INITRD /live/initrd.img" in cfg
    assert f"  APPEND {SPEC.cmdline}" in cfg
    grub = iso9660.grub_cfg(SPEC)
    assert "serial --unit=0 --speed=115200" in grub and "terminal_output serial console" in grub
    assert "set timeout=1" in grub
    # GRUB would expand $y and split 'a b': each word is quoted where needed
    assert "\tlinux /live/vmlinuz console=ttyS0,115200 panic=-1 'x='\\''a' 'b'\\''' '$y'\n" in grub
    assert "menuentry 'Unit test ISO' {" in grub
    early = iso9660.grub_early_cfg("ISOBUILD_UNIT")
    assert early.splitlines() == ["search --no-floppy --set=root --label ISOBUILD_UNIT",
                                  "set prefix=($root)/boot/grub", "configfile $prefix/grub.cfg"]


def test_padding_always_leaves_room_for_the_backupgpt() -> None:
    class Geometry:
        geometry_heads, geometry_sectors = 64, 32

    mib = 1 << 20
    for size in (mib, mib - 2048, mib - 16 * 1024, 3 * mib + 2048, 5 * mib - 40 * 512):
        cylinders, padding = iso9660.cylinders_with_gpt_room(Geometry(), size)
        assert padding >= 33 * 512 and (size + padding) % mib == 0 and cylinders == (size + padding) // mib


# --- the ISO itself --------------------------------------------------------------

def test_el_torito_bios_and_uefi_entries(built: tuple[Path, Path]) -> None:
    _, image = built
    info = iso9660.describe(image)
    assert info["label"] == "ISOBUILD_UNIT" and info["rock_ridge"] and info["joliet"]
    assert info["hybrid_mbr"] and info["gpt"]
    bios, uefi = info["eltorito"]
    assert (bios["platform"], bios["emulation"], bios["load_size"], bios["bootable"]) == ("bios", "noemul", 4, True)
    assert (uefi["platform"], uefi["emulation"], uefi["bootable"]) == ("uefi", "noemul", True)
    assert uefi["load_size"] * 512 == len(read_back(image, rr_path="/boot/grub/efiboot.img")) < 32 << 20
    # a second opinion: xorriso's report of the boot catalog
    report = subprocess.run(["xorriso", "-indev", str(image), "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True)
    lines = (report.stdout + report.stderr).splitlines()
    imgs = [line.split(":", 1)[1].split() for line in lines if line.startswith("El Torito boot img :")]
    assert [(i[0], i[1], i[2], i[3], i[6]) for i in imgs] == [("1", "BIOS", "y", "none", "4"),
                                                                  ("2", "UEFI", "y", "none", str(uefi["load_size"]))]
    paths = {line.split()[-2]: line.split()[-1] for line in lines if line.startswith("El Torito img path :")}
    assert paths == {"1": "/isolinux/isolinux.bin", "2": "/boot/grub/efiboot.img"}
    assert "boot-info-table" in next(line for line in lines if line.startswith("El Torito img opts :   1"))


def test_x86_64_is_the_default_and_its_mbr_is_hybrid_and_protective(built: tuple[Path, Path]) -> None:
    _, image = built
    assert (SPEC.arch, SPEC.grub_dir) == ("x86_64", None)
    info = iso9660.describe(image)
    assert (info["hybrid_mbr"], info["protective_mbr"], info["gpt"]) == (True, True, True)
    assert iso9660.efi_boot_image(image) == (info["eltorito"][0]["load_rba"] * 4, 4), "the initial entry: ISOLINUX"


def test_rock_ridge_and_joliet_carry_the_real_names(built: tuple[Path, Path]) -> None:
    tree, image = built
    boot_files = {"/isolinux/isolinux.bin", "/isolinux/ldlinux.c32", "/isolinux/isolinux.cfg",
                  "/isolinux/boot.cat", "/boot/grub/grub.cfg", "/boot/grub/efiboot.img"}
    real = {f"/{rel}" for rel in FILES} | boot_files
    assert walk(image, rr_path="/") == real | {"/vmlinuz"}  # the symlink is Rock Ridge only
    joliet = walk(image, joliet_path="/")
    assert len(joliet) == len(real) and {p for p in joliet if len(p.rsplit("/", 1)[1]) < 60} == {
        p for p in real if len(p.rsplit("/", 1)[1].encode()) <= 64}
    names = walk(image, iso_path="/")
    assert {"/FOO_BAR.TXT;1", "/FOO_BAR_1.TXT;1", "/LIVE/VMLINUZ.;1", "/LIVE/FILESYSTEM.SQUASHFS;1"} <= names
    assert all(re.fullmatch(r"(/[A-Z0-9_]+)*/[A-Z0-9_]*\.[A-Z0-9_]*;1", n) for n in names), names
    for rel in FILES:
        assert read_back(image, rr_path=f"/{rel}") == (tree / rel).read_bytes(), rel
    assert read_back(image, joliet_path="/foo_bar.txt") == (tree / "foo_bar.txt").read_bytes()
    assert read_back(image, rr_path="/boot/grub/grub.cfg").decode() == iso9660.grub_cfg(SPEC)
    assert read_back(image, rr_path="/isolinux/isolinux.cfg").decode() == iso9660.isolinux_cfg(SPEC)


def test_uefi_image_holds_grub_that_finds_the_iso_by_label(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = built
    fat = tmp_path / "efiboot.img"
    fat.write_bytes(read_back(image, rr_path="/boot/grub/efiboot.img"))
    listing = subprocess.run(["mdir", "-b", "-i", str(fat), "::/EFI/BOOT"], capture_output=True, text=True,
                             check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert listing.split() == ["::/EFI/BOOT/BOOTX64.EFI"]
    efi = tmp_path / "BOOTX64.EFI"
    subprocess.run(["mcopy", "-i", str(fat), "::/EFI/BOOT/BOOTX64.EFI", str(efi)], check=True)
    assert efi.read_bytes()[:2] == b"MZ" and b"--label ISOBUILD_UNIT" in efi.read_bytes()


def gpt(image: Path, lba: int) -> dict[str, Any]:
    with image.open("rb") as f:
        f.seek(lba * 512)
        head = f.read(92)
        fields = struct.unpack("<8s4sIIIQQQQ16sQIII", head)
        f.seek(fields[10] * 512)
        entries = f.read(fields[11] * fields[12])
    crc_ok = zlib.crc32(head[:16] + b"\0\0\0\0" + head[20:]) == fields[3]
    return {"current": fields[5], "backup": fields[6], "first": fields[7], "last": fields[8], "guid": fields[9],
            "entries": entries,
            "entries_crc_ok": zlib.crc32(entries) == fields[13], "header_crc_ok": crc_ok}


def test_usb_partition_tables_are_valid(built: tuple[Path, Path]) -> None:
    _, image = built
    data = image.read_bytes()
    assert data[510:512] == b"\x55\xaa"
    assert data[:2] == b"\x33\xed", "pycdlib's isohybrid boot code stays in the MBR"
    assert struct.unpack_from("<I", data, 440)[0] == iso9660.MBR_ID
    mbr = [struct.unpack_from("<B3sB3sII", data, 446 + 16 * i) for i in range(4)]
    assert (mbr[0][0], mbr[0][2], mbr[0][4]) == (0x00, 0xEE, 1), "a protective MBR, not active (EDK2 insists)"
    assert mbr[1][0] == 0x80 and mbr[1][2] == 0x00 and mbr[2][2] == mbr[3][2] == 0
    result = subprocess.run(["sgdisk", "-v", str(image)], capture_output=True, text=True)
    assert result.returncode == 0 and "No problems found" in result.stdout, result.stdout + result.stderr
    primary = gpt(image, 1)
    backup = gpt(image, primary["backup"])
    assert primary["backup"] == len(data) // 512 - 1 and backup["backup"] == 1
    for header in (primary, backup):
        assert header["header_crc_ok"] and header["entries_crc_ok"]
    assert primary["guid"] == backup["guid"] and primary["entries"] == backup["entries"]
    table = subprocess.run(["sgdisk", "-p", str(image)], capture_output=True, text=True, check=True).stdout
    esp = [line.split() for line in table.splitlines() if re.match(r"\s+\d+\s", line)]
    uefi = iso9660.describe(image)["eltorito"][1]
    assert esp == [["1", str(uefi["load_rba"] * 4), str(uefi["load_rba"] * 4 + uefi["load_size"] - 1),
                    "2.0", "MiB", "EF00", "EFI", "boot"]]


def test_same_inputs_same_bytes(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, first = built
    again = make_tree(tmp_path / "tree")
    for path in again.rglob("*"):  # other mtimes, other paths: still the same ISO
        os.utime(path, (EPOCH + 12345, EPOCH + 12345), follow_symlinks=False)
    second = master(tmp_path, again, tmp_path / "elsewhere" / "other-name.iso")
    assert sha256(first) == sha256(second)
    later = master(tmp_path, again, tmp_path / "later.iso", epoch=EPOCH + 86400)
    assert sha256(later) != sha256(first), "the epoch is the ISO's timestamps"
    reader = pycdlib.PyCdlib()
    reader.open(str(first))
    try:
        assert reader.pvd.volume_creation_date.year == 2023  # 1_700_000_000 is 2023-11-14 22:13:20 UTC
        assert (reader.pvd.volume_creation_date.hour, reader.pvd.volume_creation_date.minute) == (22, 13)
    finally:
        reader.close()


def test_volume_ending_on_a_cylinder_keeps_its_last_file(tmp_path: Path) -> None:
    """pycdlib 1.22.0 wrote the backup GPT over the ISO's last sectors when the
    volume ended less than 33 sectors before a 1 MiB boundary."""
    tree = make_tree(tmp_path / "tree")
    probe = master(tmp_path, tree, tmp_path / "probe.iso")
    blocks = struct.unpack_from("<I", probe.read_bytes(), 16 * 2048 + 80)[0]
    (tree / "zz-filler").write_bytes(random.Random(3).randbytes((-blocks % 512) * 2048))
    image = master(tmp_path, tree, tmp_path / "aligned.iso")
    assert struct.unpack_from("<I", image.read_bytes(), 16 * 2048 + 80)[0] % 512 == 0, "the case under test"
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(tree).as_posix()
            assert read_back(image, rr_path=f"/{rel}") == path.read_bytes(), rel
    assert subprocess.run(["sgdisk", "-v", str(image)], capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_after_the_temp_file_keeps_the_previous_iso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          exc: BaseException) -> None:
    tree = make_tree(tmp_path / "tree")
    out = master(tmp_path, tree, tmp_path / "out" / "live.iso")
    before = sha256(out)
    seen: list[Path] = []

    def fail(image: Path) -> None:
        assert image.parent == out.parent and image.stat().st_size > 1 << 20, "the new ISO is written"
        seen.append(image)
        raise exc

    monkeypatch.setattr(iso9660, "repair_partition_tables", fail)
    (tree / "new-file").write_text("changes the ISO")
    with pytest.raises(type(exc)):
        master(tmp_path, tree, out)
    assert seen and sha256(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["live.iso"], "no temp file left behind"


def test_mastering_child_failure_keeps_the_previous_iso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "tree")
    out = master(tmp_path, tree, tmp_path / "out" / "live.iso")
    before = sha256(out)
    real_write = iso9660._write_iso

    def child_fails(roots: list[Path], dest: Path, label: str) -> None:
        real_write([tmp_path / "vanished", *roots[1:]], dest, label)  # the mastering child dies half-way

    monkeypatch.setattr(iso9660, "_write_iso", child_fails)
    with pytest.raises(runner.CommandFailed) as err:
        master(tmp_path, tree, out)
    assert "full log:" in err.value.details[-1]
    assert any("vanished" in line for line in err.value.details), "the child's traceback is shown"
    assert sha256(out) == before and [p.name for p in out.parent.iterdir()] == ["live.iso"]


def test_every_command_goes_through_the_runner_as_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    real_run = runner.run

    def record(argv: Any, **kwargs: Any) -> runner.Result:
        calls.append([str(a) for a in argv])
        assert kwargs.get("log_path") == tmp_path / "master.log"
        return real_run(argv, **kwargs)

    def record_child(func: Any, argv: Any, log_path: Path) -> None:
        calls.append([str(a) for a in argv])
        assert log_path == tmp_path / "master.log"
        real_child(func, argv, log_path)

    real_child = runner.in_child
    monkeypatch.setattr(runner, "run", record)
    monkeypatch.setattr(runner, "in_child", record_child)
    master(tmp_path, make_tree(tmp_path / "tree"), tmp_path / "x.iso")
    assert [Path(c[0]).name for c in calls] == ["grub-mkimage", "mkfs.vfat", "mmd", "mcopy",
                                                Path(sys.executable).name]
    assert calls[0][:7] == ["grub-mkimage", "-O", "x86_64-efi", "-d", str(iso9660.GRUB_EFI_DIR), "-p", "/boot/grub"]
    assert calls[0][-len(iso9660.GRUB_MODULES):] == list(iso9660.GRUB_MODULES)
    assert calls[1][:5] == ["mkfs.vfat", "--invariant", "-i", iso9660.FAT_VOLUME_ID, "-C"]
    assert calls[4][1:3] == ["-m", "builder.tools.iso9660"]
    log = (tmp_path / "master.log").read_text()
    assert "$ env SOURCE_DATE_EPOCH=1700000000 TZ=UTC" in log.replace("MTOOLS_SKIP_CHECK=1 ", "")


def test_missing_tools_and_loaders_are_infra_errors_with_hints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "tree")
    monkeypatch.setattr(iso9660, "ISOLINUX_BIN", tmp_path / "no-isolinux.bin")
    with pytest.raises(InfraError) as err:
        master(tmp_path, tree, tmp_path / "x.iso")
    assert "no-isolinux.bin not found" in err.value.message and "apt-get install isolinux" in (err.value.hint or "")
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(InfraError, match="grub-mkimage: command not found"):
        master(tmp_path, tree, tmp_path / "x.iso")
    assert not (tmp_path / "x.iso").exists()


def test_tree_mistakes_are_user_errors(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    with pytest.raises(UserError, match="boot kernel live/missing is not a file"):
        master(tmp_path, tree, tmp_path / "x.iso", iso9660.BootSpec("L", "live/missing", "live/initrd.img", "", "t"))
    with pytest.raises(UserError, match="is not allowed"):
        master(tmp_path, tree, tmp_path / "x.iso", iso9660.BootSpec("L", "../etc/passwd", "live/initrd.img", "", "t"))
    with pytest.raises(UserError, match="one line"):
        master(tmp_path, tree, tmp_path / "x.iso", iso9660.BootSpec("L", SPEC.kernel, SPEC.initrd, "a\nb", "t"))
    with pytest.raises(UserError, match="'bad label'"):
        master(tmp_path, tree, tmp_path / "x.iso", iso9660.BootSpec("bad label", SPEC.kernel, SPEC.initrd, "", "t"))
    (tree / "isolinux").mkdir()
    (tree / "isolinux" / "isolinux.cfg").write_text("mine")
    with pytest.raises(UserError, match=r"isolinux/isolinux\.cfg comes from two sources"):
        master(tmp_path, tree, tmp_path / "x.iso")
    shutil.rmtree(tree / "isolinux")
    os.mkfifo(tree / "pipe")
    with pytest.raises(UserError, match="pipe in the ISO tree is a device, fifo or socket"):
        master(tmp_path, tree, tmp_path / "x.iso")
    assert not (tmp_path / "x.iso").exists()


# --- booting: the QEMU command lines ---------------------------------------------

@pytest.fixture
def fake_ovmf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bootmedia.Ovmf:
    code, variables = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"c")
    variables.write_bytes(b"v")
    monkeypatch.setattr(bootmedia, "OVMF_CANDIDATES", ((tmp_path / "absent.fd", variables), (code, variables)))
    return bootmedia.Ovmf(code, variables)


def test_iso_argv_for_the_four_modes(fake_ovmf: bootmedia.Ovmf, tmp_path: Path) -> None:
    arch = ARCHES["x86_64"]
    image, store = Path("/srv/a,b.iso"), tmp_path / "vars.fd"
    common = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max,-erms,-fsrm", "-m", "1024",
              "-smp", "2", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio",
              "-no-reboot"]
    uefi = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={fake_ovmf.code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={store}"]
    cd = ["-drive", "file=/srv/a,,b.iso,format=raw,media=cdrom,if=none,id=cd,readonly=on",
          "-device", "ide-cd,drive=cd,bus=ide.0,bootindex=0"]
    usb = ["-device", "qemu-xhci,id=xhci", "-drive", "file=/srv/a,,b.iso,format=raw,if=none,id=stick,readonly=on",
           "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]
    assert bootmedia.iso_argv(arch, "tcg", image, "bios", "cd", 1024, None) == common + cd
    assert bootmedia.iso_argv(arch, "tcg", image, "bios", "usb", 1024, None) == common + usb
    assert bootmedia.iso_argv(arch, "tcg", image, "uefi", "cd", 1024, store) == common + uefi + cd
    assert bootmedia.iso_argv(arch, "tcg", image, "uefi", "usb", 1024, store) == common + uefi + usb
    assert bootmedia.iso_argv(arch, "kvm", image, "bios", "cd", 1024, None)[1:7] == [
        "-accel", "kvm", "-machine", "q35", "-cpu", "host"]
    with pytest.raises(ValueError, match="writable copy"):
        bootmedia.iso_argv(arch, "tcg", image, "uefi", "cd", 1024, None)
    smoke = bootmedia.iso_argv(arch, "tcg", image, "bios", "cd", 1024, None,
                             {"opt/isobuild/smoke": "1", "opt/isobuild/a": "x,y"})
    assert smoke == common + cd + ["-fw_cfg", "name=opt/isobuild/a,string=x,,y",
                                   "-fw_cfg", "name=opt/isobuild/smoke,string=1"]


def test_missing_ovmf_is_an_infra_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError) as err:
        bootmedia.ovmf(((tmp_path / "CODE.fd", tmp_path / "VARS.fd"),))
    assert "OVMF" in err.value.message and err.value.hint == "apt-get install ovmf"


def test_debian_ovmf_is_found() -> None:
    # the set-up installs every tool in the doctor table; a missing one must fail, not skip
    fw = bootmedia.ovmf()
    assert fw.code.name.startswith("OVMF_CODE") and fw.vars.name.startswith("OVMF_VARS")
    assert ("4M" in fw.code.name) == ("4M" in fw.vars.name), "code and vars of the same flash size"


def test_boot_iso_refuses_a_missing_iso(tmp_path: Path) -> None:
    from builder.tools import console

    with pytest.raises(UserError, match="not found"):
        bootmedia.boot_iso(ARCHES["x86_64"], tmp_path / "none.iso", "bios", "cd", console.Expect({}),
                         tmp_path / "log")


def test_the_longest_label_allowed_masters(tmp_path: Path) -> None:
    """16 is the limit because the Joliet volume name holds 16 characters: a longer label passed the
    check once and then failed inside the mastering child."""
    longest = dataclasses.replace(SPEC, label="X" * 16)
    image = master(tmp_path, make_tree(tmp_path / "tree"), tmp_path / "long.iso", longest)
    assert iso9660.describe(image)["label"] == "X" * 16
