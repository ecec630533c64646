"""The real tier for UEFI-only ISOs: arm64 and riscv64 images mastered with Debian's own GRUB
modules and booted under QEMU (TCG) as far as GRUB reading the ISO's grub.cfg.

GRUB's modules come from the archive the host's apt uses: ``grub-efi-arm64-bin`` from bookworm,
``grub-efi-riscv64-bin`` from trixie (bookworm has no riscv64), verified through the suite's signed
InRelease (builder.tools.aptrepo) and cached in the real tier's work dir, then unpacked with
``dpkg-deb -x``.  The kernel on the ISO is a dummy: GRUB finds the ISO by its label, reads
grub.cfg, runs the menu entry (the console shows "Booting `<title>'") and refuses the file as a
kernel -- proof that firmware, El Torito or GPT, the ESP, GRUB and its config all worked.

Measured here (2 cores, load 0-5): QEMU start to GRUB's refusal 6.3-8.8 s with AAVMF from CD,
6.3-6.7 s from USB; 2.9-5.1 s with OpenSBI + U-Boot (2 s of it U-Boot's autoboot delay).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from builder.infra import runner
from builder.infra.arch import ARCHES
from builder.tools import aptrepo, aptsources, bootmedia, iso9660
from tests.real.conftest import WORK

pytestmark = pytest.mark.real

SUITES = {"arm64": "bookworm", "riscv64": "trixie"}  # the first suite that has each arch's GRUB
PE_MACHINE = {"arm64": 0xAA64, "riscv64": 0x5064}  # IMAGE_FILE_MACHINE_ARM64 / _RISCV64
EPOCH = 1_700_000_000
BOOT_LIMIT = 90.0  # seconds to GRUB's refusal under TCG on a loaded host; the hard timeout is twice that
# GRUB's loader refusing the dummy: 2.06 (arm64) and 2.12 (riscv64) both say "plain image kernel
# not supported" for a file without the EFI stub's PE header; the others are other versions' words.
REFUSAL = re.compile(r"error: (plain image kernel not supported|invalid magic number|invalid file|"
                     r"premature end of file)")


def title(arch: str) -> str:
    return f"isobuild {arch} GRUB probe"


def master(arch: str, tmp: Path) -> Path:
    """A small ISO for ``arch`` mastered with the arch's GRUB from the Debian archive."""
    target = ARCHES[arch]
    suite = SUITES[arch]
    rel = aptrepo.release(aptsources.archive_mirror(suite), suite)
    deb = aptrepo.deb(rel, "main", target.deb_arch, target.grub_efi_package, WORK / "cache" / "debian-archive")
    runner.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
    grub = tmp / "root" / "usr" / "lib" / "grub" / target.grub_target
    tree = tmp / "tree"
    (tree / "live").mkdir(parents=True)
    (tree / "live" / "vmlinuz").write_bytes(b"not a kernel\n" * 1000)
    (tree / "live" / "initrd.img").write_bytes(b"not an initrd\n" * 1000)
    (tree / "README.txt").write_text(f"isobuild {arch} real tier\n")
    spec = iso9660.BootSpec(f"ISOBUILD_{arch.upper()}", "live/vmlinuz", "live/initrd.img",
                            f"console={target.console} panic=-1", title(arch), arch=arch, grub_dir=grub)
    image = tmp / "out" / f"{arch}.iso"
    iso9660.master(tree, image, spec, tmp / "work", tmp / "master.log", EPOCH)
    return image


@pytest.fixture(scope="module")
def isos(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """arch -> its ISO, mastered on first use and shared by the module's tests."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = master(arch, tmp_path_factory.mktemp(f"real-iso-{arch}"))
        return made[arch]

    return get


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_iso_is_uefi_only_with_a_valid_gpt(isos: Callable[[str], Path], arch: str, tmp_path: Path) -> None:
    image = isos(arch)
    info = iso9660.describe(image)
    assert info["label"] == f"ISOBUILD_{arch.upper()}"
    assert [(e["platform"], e["emulation"], e["bootable"]) for e in info["eltorito"]] == [("uefi", "noemul", True)]
    assert (info["hybrid_mbr"], info["protective_mbr"], info["gpt"]) == (False, True, True)
    result = subprocess.run(["sgdisk", "-v", str(image)], capture_output=True, text=True)
    assert result.returncode == 0 and "No problems found" in result.stdout, result.stdout + result.stderr
    # the ESP (GPT partition 1) is the El Torito image, and holds GRUB for the arch
    start, count = iso9660.efi_boot_image(image)
    fat = tmp_path / "esp.img"
    with image.open("rb") as f:
        f.seek(start * 512)
        fat.write_bytes(f.read(count * 512))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    name = ARCHES[arch].efi_boot_name
    listing = subprocess.run(["mdir", "-b", "-i", str(fat), "::/EFI/BOOT"], capture_output=True, text=True,
                             check=True, env=env).stdout
    assert listing.split() == [f"::/EFI/BOOT/{name}"]
    efi = subprocess.run(["mtype", "-i", str(fat), f"::/EFI/BOOT/{name}"], capture_output=True, check=True,
                         env=env).stdout
    pe = int.from_bytes(efi[0x3C:0x40], "little")
    assert efi[:2] == b"MZ" and efi[pe:pe + 4] == b"PE\0\0"
    assert int.from_bytes(efi[pe + 4:pe + 6], "little") == PE_MACHINE[arch], "GRUB for the arch, not the host"
    assert f"--label {info['label']}".encode() in efi, "the embedded config finds the ISO by label"


@pytest.mark.parametrize(("arch", "mode", "smoke"), [
    ("arm64", "uefi-cd", False), ("arm64", "uefi-usb", True), ("riscv64", "uefi-disk", False),
    ("riscv64", "uefi-disk", True)],
    ids=["arm64-uefi-cd", "arm64-uefi-usb-smoke", "riscv64-uefi-disk", "riscv64-uefi-disk-smoke"])
def test_firmware_runs_grub_which_reads_grub_cfg_from_the_iso(isos: Callable[[str], Path], arch: str, mode: str,
                                                              smoke: bool, tmp_path: Path) -> None:
    """``smoke``: with the smoke test's fw_cfg items, i.e. on riscv64 with the smoke drive attached
    after the ISO (U-Boot must still boot from the ISO)."""
    image = isos(arch)
    target = ARCHES[arch]
    firmware, media = (cast(bootmedia.Firmware, mode.split("-")[0]), cast(bootmedia.Media, mode.split("-")[1]))
    seen: dict[str, float] = {}
    start = time.monotonic()

    def on_line(line: str) -> bool:
        if f"Booting `{title(arch)}'" in line:
            seen.setdefault("menu entry", time.monotonic() - start)
        if "menu entry" in seen and REFUSAL.search(line):
            seen.setdefault("kernel refused", time.monotonic() - start)
        return "kernel refused" in seen

    log_path = tmp_path / f"{arch}-{mode}.log"
    fw_cfg = {"opt/isobuild/smoke": "1"} if smoke else None
    with bootmedia.boot_argv(target, "tcg", image, firmware, media, 512, fw_cfg) as argv:
        result = runner.run(argv, log_path=log_path, timeout=2 * BOOT_LIMIT, check=False, on_line=on_line)
    text = log_path.read_text(errors="replace")
    assert result.stopped and "kernel refused" in seen, (result.returncode, result.timed_out, text[-3000:])
    assert seen["kernel refused"] < BOOT_LIMIT, f"{arch} {mode}: {seen}"
    print(f"{arch} {mode}{' +smoke' if smoke else ''}: GRUB's menu entry at {seen['menu entry']:.1f} s, "
          f"kernel refused at {seen['kernel refused']:.1f} s")
    # ... through the firmware and the medium the mode says
    if arch == "arm64":
        device = "CD-ROM" if media == "cd" else "USB HARDDRIVE"
        assert re.search(rf'BdsDxe: starting Boot\d+ "UEFI QEMU QEMU {device}', text), "AAVMF booted the medium"
    else:
        assert "U-Boot 2023.01" in text and "Scanning virtio 0:1..." in text, "U-Boot read the ISO's ESP"
        assert "Found EFI removable media binary efi/boot/bootriscv64.efi" in text
    assert ("serial=isobuild-smoke" in " ".join(argv)) == (smoke and target.smoke_channel == "drive")
