"""Target architectures: validation, the per-arch make and QEMU command lines, the profiles per
arch, the settings that name arches, and the host-tool table that installs what each arch needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from builder.commands import doctor
from builder.infra import arch as arch_mod
from builder.infra import runner, schema
from builder.infra.arch import ARCHES
from builder.infra.config import Settings
from builder.infra.errors import InfraError, UserError
from builder.stages.kernel import reproducible_env
from builder.tools import busybox, kconfig, qemu

REPO = Path(__file__).resolve().parents[2]


def test_get_names_the_known_arches() -> None:
    assert arch_mod.get("arm64").make_arch == "arm64" and arch_mod.get("riscv64").make_arch == "riscv"
    with pytest.raises(UserError, match="--arch: unknown architecture 'aarch64'") as exc:
        arch_mod.get("aarch64", "--arch")
    assert exc.value.hint == "known: x86_64, arm64, riscv64"


def test_cross_compile_prefix_follows_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arch_mod, "host_arch", lambda: "x86_64")
    assert ARCHES["x86_64"].cross_compile() == "" and ARCHES["x86_64"].native()
    assert ARCHES["arm64"].cross_compile() == "aarch64-linux-gnu-"
    assert ARCHES["riscv64"].cross_compile() == "riscv64-linux-gnu-" and not ARCHES["riscv64"].native()
    monkeypatch.setattr(arch_mod, "host_arch", lambda: "arm64")  # an arm64 build host
    assert ARCHES["arm64"].cross_compile() == "" and ARCHES["x86_64"].cross_compile() == "x86_64-linux-gnu-"


def test_make_env_carries_arch_and_cross_compile() -> None:
    env = reproducible_env(Path("/s"), Path("/b"), "riscv", "-isobuild", 0, "riscv64-linux-gnu-")
    assert env["ARCH"] == "riscv" and env["CROSS_COMPILE"] == "riscv64-linux-gnu-"
    assert "CROSS_COMPILE" not in reproducible_env(Path("/s"), Path("/b"), "x86_64", "-isobuild", 0)


def test_kernel_argv_per_arch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ISOBUILD_QEMU_CPU", raising=False)
    arm = qemu.kernel_argv(ARCHES["arm64"], Path("/k"), Path("/i"), "console=ttyAMA0", 512, "tcg")
    assert arm[:7] == ["qemu-system-aarch64", "-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a57"]
    assert "-bios" not in arm and arm[arm.index("-kernel") + 1] == "/k"
    firmware = tmp_path / "fw_jump.bin"
    firmware.write_bytes(b"sbi")
    monkeypatch.setitem(ARCHES, "riscv64", dataclasses.replace(ARCHES["riscv64"], firmware=str(firmware)))
    rv = qemu.kernel_argv(ARCHES["riscv64"], Path("/k"), Path("/i"), "console=ttyS0", 512, "tcg")
    assert rv[:5] == ["qemu-system-riscv64", "-accel", "tcg", "-machine", "virt"]
    assert rv[rv.index("-bios") + 1] == str(firmware) and rv.index("-bios") < rv.index("-kernel")
    assert rv[rv.index("-cpu") + 1] == "rv64"


def test_missing_firmware_names_file_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = dataclasses.replace(ARCHES["riscv64"], firmware="/nonexistent/fw.bin")
    with pytest.raises(InfraError, match=r"/nonexistent/fw\.bin not found: booting riscv64 needs it") as exc:
        qemu.firmware(gone)
    assert exc.value.hint is not None and "apt-get install opensbi" in exc.value.hint


def test_foreign_arch_is_always_tcg_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOBUILD_ACCEL", raising=False)
    monkeypatch.setattr(arch_mod, "host_arch", lambda: "x86_64")
    qemu.accelerator.cache_clear()

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the KVM probe ran for a foreign arch")

    monkeypatch.setattr(runner, "run", no_probe)
    assert qemu.accelerator(ARCHES["arm64"]) == "tcg" and qemu.accelerator(ARCHES["riscv64"]) == "tcg"
    qemu.accelerator.cache_clear()


def test_every_arch_has_its_tools_in_the_doctor_table() -> None:
    table = {t.name: t.package for t in doctor.TOOLS}
    for arch in ARCHES.values():
        if arch.name == "x86_64":
            continue
        assert table[f"{arch.triplet}-gcc"] == arch.cross_package
        assert table[arch.qemu] == arch.qemu_package
        if arch.firmware:
            assert table[arch.firmware] == arch.firmware_package
    assert table["qemu-system-x86_64"] == ARCHES["x86_64"].qemu_package


def test_profiles_per_arch() -> None:
    for name in ("ci", "default"):
        per_arch = {a: kconfig.load_profile(REPO, name, ["patches/kernel/xsc.config"], a) for a in ARCHES}
        for arch, profile in per_arch.items():
            requested = profile.requested()
            assert requested["CONFIG_XSC"] == ("y", "patches/kernel/xsc.config"), arch
            assert requested["CONFIG_SQUASHFS"][0] == requested["CONFIG_OVERLAY_FS"][0] == "y", arch
            assert requested["CONFIG_EFI_STUB"][0] == "y", arch
        # the arch's own console and no option of another arch's platform
        assert "CONFIG_SERIAL_AMBA_PL011_CONSOLE" in per_arch["arm64"].requested()
        assert "CONFIG_KVM_GUEST" not in per_arch["arm64"].requested()
        assert "CONFIG_SERIAL_OF_PLATFORM" in per_arch["riscv64"].requested()
        assert "CONFIG_FW_CFG_SYSFS" not in per_arch["riscv64"].requested()  # cannot exist on riscv in 6.1
    # x86_64's fragments are what they were before profiles had arches: its kernels keep their keys
    ci = kconfig.load_profile(REPO, "ci", ["patches/kernel/xsc.config"], "x86_64")
    assert [f.label for f in ci.fragments] == ["profiles/kernel/release.config", "profiles/kernel/ci.config",
                                               "patches/kernel/xsc.config"]


def test_profile_arches_must_be_lists_of_fragments(tmp_path: Path) -> None:
    (tmp_path / "profiles/kernel").mkdir(parents=True)
    (tmp_path / "profiles/kernel/p.yaml").write_text("base: tinyconfig\narches:\n  arm64: one.config\n")
    with pytest.raises(UserError, match=r"arches\.arm64: expected a list"):
        kconfig.load_profile(tmp_path, "p", [], "arm64")


def test_settings_arch_and_busybox_suites() -> None:
    assert schema.load(Settings, {"arch": "riscv64"}, "isobuild.yaml").arch == "riscv64"
    with pytest.raises(UserError, match=r"isobuild.yaml: arch: expected .*'x86_64'.*got 'sparc'"):
        schema.load(Settings, {"arch": "sparc"}, "isobuild.yaml")
    ok = schema.load(Settings, {"kernel": {"boot": {"busybox_suites": {"riscv64": "sid"}}}}, "isobuild.yaml")
    assert ok.kernel.boot.busybox_suites == {"riscv64": "sid"}
    with pytest.raises(UserError, match="busybox_suites: has an unknown architecture 'ppc64el'"):
        schema.load(Settings, {"kernel": {"boot": {"busybox_suites": {"ppc64el": "sid"}}}}, "isobuild.yaml")
    with pytest.raises(UserError, match="busybox_suites: riscv64: 'Trixie!' is not a Debian suite name"):
        schema.load(Settings, {"kernel": {"boot": {"busybox_suites": {"riscv64": "Trixie!"}}}}, "isobuild.yaml")
    with pytest.raises(UserError, match=r"kernel\.boot\.mirror: must be an http\(s\):// or file:// URI"):
        schema.load(Settings, {"kernel": {"boot": {"mirror": "ftp.example"}}}, "isobuild.yaml")


def test_busybox_binary_checks() -> None:
    def elf(machine: int, interp: bool) -> bytes:
        import struct
        head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
        head += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
        return head + struct.pack("<IIQQQQQQ", 3 if interp else 1, 4, 0, 0, 0, 0, 0, 0)

    busybox.check_binary(elf(183, False), ARCHES["arm64"], "x")
    with pytest.raises(UserError, match=r"x: not an executable for riscv64 \(ELF machine 183\)"):
        busybox.check_binary(elf(183, False), ARCHES["riscv64"], "x")
    with pytest.raises(UserError, match="x: dynamically linked"):
        busybox.check_binary(elf(243, True), ARCHES["riscv64"], "x")
    assert busybox.elf_machine(b"not an elf") is None
