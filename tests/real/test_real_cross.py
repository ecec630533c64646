"""The real tier, other arches: Debian's linux-source-6.1 with the example XSC series and the `ci`
profile cross-built for arm64 and riscv64 with Debian's cross compilers, packaged for the target
arch, and booted under QEMU (virt board; OpenSBI on riscv64) with the target arch's busybox-static
from the Debian archive -- the patched driver's marker read inside the guest.

Cold, each arch costs about as much as the x86_64 ci kernel (6-8 minutes here); warm, seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.infra.arch import ARCHES
from builder.infra.errors import ExitCode
from builder.tools import busybox
from tests.real.conftest import current, record, run

pytestmark = pytest.mark.real

# what the kernel's own Image header says at offset 56 (arm64 booting.rst; riscv boot-image-header.rst)
IMAGE_MAGIC = {"arm64": b"ARM\x64", "riscv64": b"RSC\x05"}


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_ci_kernel_cross_builds_packages_and_boots(project: Path, arch: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = ARCHES[arch]
    assert run(project, "kernel", "--profile", "ci", "--arch", arch, "--boot",
               "--packages", "deb-image,deb-libc-dev") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    artifact = current(project, f"kernel-ci-{arch}")
    meta = json.loads((artifact / "metadata.json").read_text())
    release = meta["kernel_release"]
    assert meta["arch"] == arch and meta["make_env"]["ARCH"] == target.make_arch
    assert meta["cross_compile"] == f"{target.triplet}-" and meta["toolchain"].startswith(f"{target.triplet}-gcc ")
    assert [p["name"] for p in meta["patches"]] == [
        "0001-xsc-add-uapi-header.patch", "0002-xsc-add-extended-syscall-driver.patch",
        "0003-xsc-add-trap-guard.patch"]
    assert meta["config"]["effective"]["CONFIG_XSC"] == "y" == meta["config"]["effective"]["CONFIG_XSC_TRAP_GUARD"]
    assert meta["diagnostics"]["errors"] == 0
    image = (artifact / "Image").read_bytes()
    assert image[56:60] == IMAGE_MAGIC[arch], "the target arch's kernel Image"
    # the target arch's packages
    (deb,) = current(project, f"kernel-package-ci.deb-image-{arch}").glob("*.deb")
    assert deb.name == f"linux-image-{release}_{release}-1_{target.deb_arch}.deb"
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Architecture"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert fields == target.deb_arch
    (dev,) = current(project, f"kernel-package-ci.deb-libc-dev-{arch}").glob("*.deb")
    listing = subprocess.run(["dpkg-deb", "-c", str(dev)], capture_output=True, text=True, check=True).stdout
    assert f"./usr/include/{target.triplet}/asm/" in listing and "./usr/include/linux/xsc.h" in listing
    # booted: the patched kernel ran on the target arch and its driver answered
    boot = record(project, f"kernel-boot-ci-{arch}")
    assert boot["status"] == "pass", boot
    assert boot["markers"] == {"UNAME": release, "MARKER": "1.0.0"}
    assert boot["accel"] == "tcg" and boot["cpu"] == target.tcg_cpu and boot["arch"] == arch
    busybox_binary = Path(boot["busybox"]).read_bytes()
    assert busybox.elf_machine(busybox_binary) == busybox.E_MACHINE[arch]
    console = Path(boot["log"]).read_text()
    assert "xsc: extended syscall interface 1.0.0 ready" in console
    assert "boot check (tcg): pass" in out


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_cross_noop_and_status_rows(project: Path, arch: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "kernel", "--profile", "ci", "--arch", arch) == 0
    capsys.readouterr()
    assert run(project, "kernel", "--profile", "ci", "--arch", arch) == 0
    assert "is up to date" in capsys.readouterr().out
    assert run(project, "status", "--json", "--arch", arch, "--profile", "ci") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["stage"], r["name"], r["arch"], r["state"]) for r in rows} >= {("kernel", "ci", arch, "built")}
    assert {r["arch"] for r in rows} == {arch}


def test_x86_only_option_for_arm64_fails_naming_it_its_dependency_and_the_arch(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xsc = project / "patches/kernel/xsc.config"
    xsc.write_text(xsc.read_text() + "CONFIG_KVM_GUEST=y\n")
    assert run(project, "kernel", "--profile", "ci", "--arch", "arm64") == ExitCode.USER
    err = capsys.readouterr().err
    assert "did not land in the arm64 .config: CONFIG_KVM_GUEST" in err
    assert "CONFIG_KVM_GUEST: requested y, got absent (patches/kernel/xsc.config)" in err
    assert "defined only under other architectures, not arm64: " in err
    assert "arch/x86/Kconfig:825 (architecture x86, depends on PARAVIRT)" in err
