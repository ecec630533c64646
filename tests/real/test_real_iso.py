"""The real tier for ISO mastering: the built ``ci`` kernel and a busybox
initramfs mastered into a hybrid ISO, booted in QEMU from BIOS and UEFI, as a
CD and as a USB stick, each proving the patched kernel ran.

The kernel comes from the shared real-tier work dir ($ISOBUILD_TEST_WORK_DIR,
default ~/.cache/isobuild-tests), built through the CLI as in
test_real_kernel.py: seconds when it is warm, about ten minutes from cold.
Each boot takes 5-15 s under TCG here.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest

from builder.infra.arch import ARCHES
from builder.tools import bootmedia, console, initramfs, iso9660
from tests.real.conftest import WORK, copy_project, current, run

pytestmark = pytest.mark.real

CMDLINE = "console=ttyS0,115200 panic=-1 rdinit=/init"
MARKER_FILE = "/sys/kernel/xsc/version"
BOOT_LIMIT = 60.0  # seconds per boot under TCG; the hard timeout is twice that


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ci kernel's artifact dir, built through the CLI (a no-op when warm)."""
    tmp = tmp_path_factory.mktemp("real-iso-kernel")
    project = copy_project(tmp / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISOBUILD_WORK_DIR", str(WORK))
        mp.chdir(project)
        assert run(project, "kernel", "--profile", "ci") == 0
    return current(project, "kernel-ci-x86_64")  # this project's record (WORK/kernel/current is pre-0.3)


def release_of(kernel: Path) -> str:
    return str(json.loads((kernel / "metadata.json").read_text())["kernel_release"])


@pytest.fixture(scope="module")
def live_iso(kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the ISO, the kernel release it must boot), mastered once for all modes."""
    tmp = tmp_path_factory.mktemp("real-iso")
    release = release_of(kernel)
    tree = tmp / "tree"
    (tree / "live").mkdir(parents=True)
    shutil.copyfile(kernel / "bzImage", tree / "live" / "vmlinuz")
    initramfs.busybox_initramfs(tree / "live" / "initrd.img", MARKER_FILE)
    spec = iso9660.BootSpec("ISOBUILD_REAL", "live/vmlinuz", "live/initrd.img", CMDLINE,
                            f"isobuild real tier ({release})")
    image = tmp / "out" / "real.iso"
    iso9660.master(tree, image, spec, tmp / "work", tmp / "master.log", 1_700_000_000)
    return image, release


@pytest.mark.parametrize(("firmware", "media"), bootmedia.MODES, ids=[f"{f}-{m}" for f, m in bootmedia.MODES])
def test_iso_boots_the_patched_kernel(live_iso: tuple[Path, str], firmware: bootmedia.Firmware,
                                      media: bootmedia.Media, tmp_path: Path) -> None:
    image, release = live_iso
    expect = console.Expect({"UNAME": re.escape(release), "MARKER": r"\d+\.\d+\.\d+"})
    log_path = tmp_path / f"{firmware}-{media}.log"
    verdict = bootmedia.boot_iso(ARCHES["x86_64"], image, firmware, media, expect, log_path,
                               timeout=2 * BOOT_LIMIT, memory=512)
    assert verdict.status == "pass", (verdict.reasons, verdict.tail)
    assert verdict.markers == {"UNAME": release, "MARKER": verdict.markers["MARKER"]}
    assert verdict.seconds < BOOT_LIMIT, f"{firmware}-{media} took {verdict.seconds:.1f} s"
    print(f"{firmware}-{media}: {verdict.seconds:.1f} s ({verdict.extra['accel']})")
    # ... and it booted the way the mode says, not by some fallback
    text = log_path.read_text(errors="replace")
    if firmware == "bios":
        assert "ISOLINUX 6" in text and "Loading /live/vmlinuz" in text
    else:
        device = "DVD-ROM" if media == "cd" else "USB HARDDRIVE"
        assert re.search(rf'BdsDxe: starting Boot\d+ "UEFI QEMU [^"]*{device}', text), "OVMF booted the medium"
        assert "GNU GRUB" in text
    assert f"Command line: BOOT_IMAGE=/live/vmlinuz {CMDLINE}" in text


def test_fw_cfg_items_reach_the_guest(kernel: Path, tmp_path: Path) -> None:
    """The smoke stage's switch: ``-fw_cfg`` items are readable in the booted ISO."""
    smoke = "/sys/firmware/qemu_fw_cfg/by_name/opt/isobuild/smoke/raw"
    # dmesg -n 1: no late kernel message (a mouse probed) lands inside the marker's line on the console
    init = ("#!/bin/busybox sh\n/bin/busybox mount -t sysfs s /sys\n/bin/busybox dmesg -n 1\n"
            f"echo \"ISOBUILD-SMOKE $(/bin/busybox cat {smoke})\"\necho ISOBUILD-DONE\n/bin/busybox poweroff -f\n")
    entries = [initramfs.Entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "sys")]
    entries += [initramfs.Entry("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes()),
                initramfs.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
                initramfs.Entry("init", stat.S_IFREG | 0o755, init.encode())]
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    shutil.copyfile(kernel / "bzImage", tree / "boot" / "linux")
    (tree / "boot" / "initrd").write_bytes(initramfs.cpio(entries))
    image = tmp_path / "fwcfg.iso"
    iso9660.master(tree, image, iso9660.BootSpec("FWCFG", "boot/linux", "boot/initrd", CMDLINE, "fw_cfg"),
                   tmp_path / "work",
               tmp_path / "master.log", 0)
    verdict = bootmedia.boot_iso(ARCHES["x86_64"], image, "bios", "cd", console.Expect({"SMOKE": "1"}),
                               tmp_path / "console.log", timeout=2 * BOOT_LIMIT, fw_cfg={"opt/isobuild/smoke": "1"})
    assert verdict.status == "pass", (verdict.reasons, verdict.tail)
