"""The real tier: Debian's linux-source-6.1, the example XSC series, the `ci`
profile, real quilt, real make, its packages made with dpkg-deb, a real QEMU boot.

The work dir is shared across tests and kept between runs (outside the
clone: $ISOBUILD_TEST_WORK_DIR, default ~/.cache/isobuild-tests), so a warm
re-run costs seconds; from cold the module takes about ten minutes here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from builder.infra.arch import ARCHES
from builder.infra.errors import ExitCode
from builder.tools import console, initramfs, qemu
from tests.conftest import Events
from tests.real.conftest import WORK, current, record, run

pytestmark = pytest.mark.real

def kernel(project: Path, profile: str = "ci") -> Path:
    return current(project, f"kernel-{profile}-x86_64")


def test_ci_kernel_builds_with_the_series_and_boots(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "kernel", "--profile", "ci", "--boot", "--packages", "deb-image") == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    meta = json.loads((kernel(project) / "metadata.json").read_text())
    release = meta["kernel_release"]
    assert release.startswith("6.1.") and release.endswith("-isobuild")
    assert [p["name"] for p in meta["patches"]] == [
        "0001-xsc-add-uapi-header.patch", "0002-xsc-add-extended-syscall-driver.patch",
        "0003-xsc-add-trap-guard.patch"]
    assert meta["config"]["effective"]["CONFIG_XSC"] == "y"
    assert meta["config"]["effective"]["CONFIG_XSC_TRAP_GUARD"] == "y"
    assert meta["config"]["effective"]["CONFIG_SQUASHFS"] == "y"
    assert meta["diagnostics"]["warnings"] == 0, "the ci kernel with the XSC series builds warning-free"
    image = kernel(project) / "bzImage"
    assert image.stat().st_size > 1_000_000
    (deb,) = current(project, "kernel-package-ci.deb-image-x86_64").glob("*.deb")
    assert deb.name == f"linux-image-{release}_{release}-1_amd64.deb"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert f"./boot/vmlinuz-{release}" in listing and f"./lib/modules/{release}/modules.dep" in listing
    assert (kernel(project) / "config").read_text().count("CONFIG_XSC=y") == 1
    # nothing in the artifact points into this work dir's build tree (modules_install's build/source links)
    assert not [p for p in kernel(project).rglob("*") if p.is_symlink() and Path(os.readlink(p)).is_absolute()]
    # the boot check: the patched kernel ran and the XSC driver answered
    boot = record(project, "kernel-boot-ci-x86_64")
    assert boot["status"] == "pass"
    assert boot["markers"] == {"UNAME": release, "MARKER": "1.0.0"}
    assert "boot check" in out and "pass" in out
    assert "xsc: extended syscall interface 1.0.0 ready" in Path(boot["log"]).read_text()


def test_unchanged_inputs_are_a_noop(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing is rebuilt: no stage starts, no make, quilt or tar runs.  (Its speed: bench/kernel.)"""
    assert run(project, "kernel", "--profile", "ci") == 0
    capsys.readouterr()
    events = Events(project / "logs")
    assert run(project, "kernel", "--profile", "ci") == 0
    assert "is up to date" in capsys.readouterr().out
    assert run(project, "status", "--json") == 0
    ran = set(events.commands())
    assert not events.built() and not {"make", "quilt", "tar", "merge_config.sh"} & ran, (events.built(), ran)
    rows = json.loads(capsys.readouterr().out)
    assert {(r["stage"], r["name"]): r["state"] for r in rows}[("kernel", "ci")] == "built"


def test_changed_patch_rebuilds_incrementally_and_boots_the_change(project: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "kernel", "--profile", "ci") == 0
    cold = json.loads((kernel(project) / "metadata.json").read_text())
    uapi = project / "patches/kernel/0001-xsc-add-uapi-header.patch"
    uapi.write_text(uapi.read_text().replace("+#define XSC_VERSION_MINOR\t0", "+#define XSC_VERSION_MINOR\t1"))
    capsys.readouterr()
    assert run(project, "status", "--json") == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if (r["stage"], r["name"]) == ("kernel", "ci"))
    assert row["state"] in ("stale", "built")  # built if an earlier run left this key's artifact
    if row["state"] == "stale":
        assert "0001-xsc-add-uapi-header.patch changed" in row["detail"]
    assert run(project, "kernel", "--profile", "ci", "--boot") == 0, capsys.readouterr().err
    meta = json.loads((kernel(project) / "metadata.json").read_text())
    assert meta["key"] != cold["key"]
    boot = record(project, "kernel-boot-ci-x86_64")
    assert boot["markers"]["MARKER"] == "1.1.0", "the booted kernel carries the changed patch"
    if row["state"] == "stale":
        compiled = [line for line in Path(meta["log"]).read_text().splitlines() if line.startswith("  CC ")]
        assert 0 < len(compiled) < 30, f"incremental: {len(compiled)} objects recompiled"
        assert meta["config_kept"] is True, "a patch to a header and C files: the kept .config stands"


def test_requested_option_with_unmet_dependency_fails_the_real_config(project: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(project / "profiles/kernel/ci.yaml", project / "profiles/kernel/ci-scratch.yaml")
    (project / "patches/kernel/xsc.config").write_text(
        (project / "patches/kernel/xsc.config").read_text() + "CONFIG_DRM_VIRTIO_GPU=y\n")
    assert run(project, "kernel", "--profile", "ci-scratch") == ExitCode.USER
    err = capsys.readouterr().err
    assert "did not land in the x86_64 .config: CONFIG_DRM_VIRTIO_GPU" in err
    assert "CONFIG_DRM_VIRTIO_GPU: requested y, got absent (patches/kernel/xsc.config)" in err
    assert "defined at drivers/gpu/drm/virtio/Kconfig" in err and "depends on DRM" in err


def test_patch_that_does_not_apply_to_the_real_tree(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(project / "profiles/kernel/ci.yaml", project / "profiles/kernel/ci-scratch.yaml")
    bad = ("--- a/drivers/misc/Makefile\n+++ b/drivers/misc/Makefile\n@@ -1,3 +1,4 @@\n"
           " # SPDX-License-Identifier: GPL-2.0\n #\n-# Makefile for misc devices that really don't fit\n"
           "+# Makefile for misc devices that do not fit\n+# (changed)\n")
    (project / "patches/kernel/0004-misc-comment.patch").write_text(bad)
    with (project / "patches/kernel/series").open("a") as f:
        f.write("0004-misc-comment.patch\n")
    assert run(project, "kernel", "--profile", "ci-scratch") == ExitCode.USER
    err = capsys.readouterr().err
    assert "patch 0004-misc-comment.patch does not apply at fuzz 0: drivers/misc/Makefile hunk #1" in err
    src = WORK / "kernel" / "trees" / "ci-scratch-x86_64" / "src"
    assert not (src / ".pc").exists() and not (src / "drivers/misc/xsc").exists(), "rolled back to pristine"


def boot_with_init(bz_image: Path, tmp_path: Path, init: str, expect: dict[str, str],
                   extra: dict[str, bytes] | None = None) -> console.Verdict:
    """Boot the built ci kernel with a custom /init (and extra files); return the verdict."""
    entries = [initramfs.Entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys")]
    entries += [initramfs.Entry("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes()),
                initramfs.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
                initramfs.Entry("init", stat.S_IFREG | 0o755, init.encode())]
    entries += [initramfs.Entry(name, stat.S_IFREG | 0o755, data) for name, data in (extra or {}).items()]
    (tmp_path / "i.cpio").write_bytes(initramfs.cpio(entries))
    arch = ARCHES["x86_64"]
    argv = qemu.kernel_argv(arch, bz_image, tmp_path / "i.cpio",
                            "console=ttyS0 panic=-1 rdinit=/init", 256, qemu.accelerator(arch))
    return qemu.watch(argv, console.Expect(expect), tmp_path / "console.log", 120)


def test_guest_panic_is_a_failure(project: Path, tmp_path: Path) -> None:
    assert run(project, "kernel", "--profile", "ci") == 0
    verdict = boot_with_init(kernel(project) / "bzImage", tmp_path, "#!/bin/busybox sh\nexit 1\n", {"MARKER": ".*"})
    assert verdict.status == "fail"
    assert verdict.reasons[0].startswith("kernel panic: Kernel panic - not syncing: Attempted to kill init!")


def test_missing_marker_fails_the_boot_check_with_exit_4(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    settings = yaml.safe_load((project / "isobuild.yaml").read_text())
    settings["kernel"]["boot"]["marker_file"] = "/sys/kernel/not-patched/version"
    settings["kernel"]["boot"]["timeout"] = 120
    (project / "isobuild.yaml").write_text(yaml.safe_dump(settings))
    assert run(project, "kernel", "--profile", "ci") == 0
    capsys.readouterr()
    assert run(project, "test", "kernel", "--profile", "ci") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "boot check failed: marker MARKER not reported (/sys/kernel/not-patched/version absent in the guest)" in err
    assert "full console log:" in err


def test_the_xsc_ioctl_and_trap_guard_work_in_the_guest(project: Path, tmp_path: Path) -> None:
    """The driver really works: a static program built against the patched uapi
    header gets the version over /dev/xsc, and unknown flags are refused."""
    assert run(project, "kernel", "--profile", "ci", "--packages", "deb-libc-dev") == 0
    # the header comes from the kernel's own linux-libc-dev package
    (libc_dev,) = current(project, "kernel-package-ci.deb-libc-dev-x86_64").glob("linux-libc-dev_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(libc_dev), str(tmp_path / "root")], check=True)
    inc = tmp_path / "inc" / "linux"
    inc.mkdir(parents=True)
    shutil.copy(tmp_path / "root/usr/include/linux/xsc.h", inc / "xsc.h")
    probe = tmp_path / "xsc-probe.c"
    probe.write_text(r'''
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <linux/xsc.h>
int main(void)
{
	struct xsc_version v = {0};
	int fd = open("/dev/xsc", O_RDONLY);
	if (fd < 0) { perror("open /dev/xsc"); return 1; }
	if (ioctl(fd, XSC_IOC_GET_VERSION, &v)) { perror("XSC_IOC_GET_VERSION"); return 1; }
	printf("ISOBUILD-IOCTL %u.%u.%u features=0x%x\n", v.major, v.minor, v.patch, v.features);
	v.flags = 0x80;
	int rc = ioctl(fd, XSC_IOC_GET_VERSION, &v);
	printf("ISOBUILD-GUARD %s\n", rc == -1 && errno == EINVAL ? "refused" : "served");
	return 0;
}
''')
    subprocess.run(["gcc", "-static", "-Wall", "-Werror", "-I", str(tmp_path / "inc"), "-o",
                    str(tmp_path / "xsc-probe"), str(probe)], check=True)
    init = ("#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs d /dev\n/bin/xsc-probe\n"
            "echo ISOBUILD-DONE\n/bin/busybox poweroff -f\n")
    verdict = boot_with_init(kernel(project) / "bzImage", tmp_path, init,
                             {"IOCTL": r"1\.0\.0 features=0x1", "GUARD": "refused"},
                             {"bin/xsc-probe": (tmp_path / "xsc-probe").read_bytes()})
    assert verdict.status == "pass", (verdict.reasons, verdict.tail)
