"""The kernel's packages, made from the fake kernel's artifact with the real dpkg-deb and rpmbuild:
what each holds, that making one runs no make, that each is made once per kernel key, and that
a changed patch explains itself down to the patch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.infra.config import load_project
from builder.infra.errors import ExitCode
from builder.stages.kernel import KernelStage
from builder.stages.kpackage import KernelPackageStage
from tests.conftest import XSC_PATCH, Events, FakeProject

RELEASE = "6.1.0-isobuild"


def _packages(project: FakeProject, capsys: pytest.CaptureFixture[str], kinds: str) -> dict[str, Path]:
    assert project.run("kernel", "--packages", kinds) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    lines = [line.strip().split(": ", 1) for line in out.splitlines() if line.startswith("  ")]
    return {kind: Path(path) for kind, path in lines}


def _listing(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines()]


def test_each_kind_holds_what_the_kernels_own_packaging_would(fake_project: FakeProject,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    made = _packages(fake_project, capsys, "rpm,deb-image,deb-libc-dev")
    assert [(k, p.name) for k, p in made.items()] == [
        ("deb-image", f"linux-image-{RELEASE}_{RELEASE}-1_amd64.deb"),
        ("deb-libc-dev", f"linux-libc-dev_{RELEASE}-1_amd64.deb"),
        ("rpm", "kernel-6.1.0_isobuild-1.x86_64.rpm")]
    kernel = fake_project.current("kernel-ci-x86_64")
    image = made["deb-image"]
    assert {f"./boot/vmlinuz-{RELEASE}", f"./boot/System.map-{RELEASE}", f"./boot/config-{RELEASE}",
            f"./lib/modules/{RELEASE}/kernel/fake.ko"} <= set(_listing(image))
    fields = subprocess.run(["dpkg-deb", "-f", str(image), "Package", "Version", "Architecture", "Source"],
                            capture_output=True, text=True, check=True).stdout
    assert fields == f"Package: linux-image-{RELEASE}\nVersion: {RELEASE}-1\nArchitecture: amd64\n" \
                     "Source: linux-upstream\n"
    postinst = subprocess.run(["dpkg-deb", "-I", str(image), "postinst"], capture_output=True, text=True,
                              check=True).stdout
    # builddeb's hook runner: initramfs-tools makes the initramfs from /etc/kernel/postinst.d
    assert f'run-parts --arg="{RELEASE}" --arg="/boot/vmlinuz-{RELEASE}" /etc/kernel/postinst.d' in postinst
    assert "export INITRD=No" in postinst, "the fake kernel's config has no CONFIG_BLK_DEV_INITRD"
    extracted = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(image)], capture_output=True, check=True).stdout
    assert (kernel / "bzImage").read_bytes() in extracted
    assert {"./usr/include/linux/xsc.h", "./usr/include/x86_64-linux-gnu/asm/fake.h"} <= \
        set(_listing(made["deb-libc-dev"]))
    rpm = subprocess.run(["rpm", "-qpl", str(made["rpm"])], capture_output=True, text=True, check=True).stdout
    assert {f"/boot/vmlinuz-{RELEASE}", f"/lib/modules/{RELEASE}/kernel/fake.ko"} <= set(rpm.split())


def test_making_a_package_runs_no_make_and_each_is_made_once(fake_project: FakeProject,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    events = Events(fake_project.root / "logs")
    first = _packages(fake_project, capsys, "deb-image,rpm")
    ran = events.commands()
    assert "make" not in ran, f"packaging reran make: {ran}"
    assert ran.count("dpkg-deb") == 1 and ran.count("rpmbuild") == 1
    again = Events(fake_project.root / "logs")
    assert _packages(fake_project, capsys, "deb-image,rpm") == first
    assert {"make", "dpkg-deb", "rpmbuild"} & set(again.commands()) == set(), "made once: the second asking reuses"
    assert again.built() == set()
    # another kind asked for later is made then, from the same artifact
    later = Events(fake_project.root / "logs")
    assert set(_packages(fake_project, capsys, "deb-libc-dev,deb-image")) == {"deb-libc-dev", "deb-image"}
    assert later.commands().count("dpkg-deb") == 1


def test_a_package_is_the_same_bytes_when_made_again(fake_project: FakeProject,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    made = _packages(fake_project, capsys, "deb-image,deb-libc-dev,rpm")
    first = {k: p.read_bytes() for k, p in made.items()}
    for path in made.values():
        subprocess.run(["rm", "-rf", str(path.parent)], check=True)
    assert {k: p.read_bytes() for k, p in _packages(fake_project, capsys, "deb-image,deb-libc-dev,rpm").items()} \
        == first


def test_a_changed_patch_makes_the_package_stale_naming_the_patch(fake_project: FakeProject,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _packages(fake_project, capsys, "deb-image")
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("xsc_version = 1", "xsc_version = 2")})
    project = load_project(fake_project.root / "isobuild.yaml")
    package = KernelPackageStage(KernelStage(project, "ci"), "deb-image")
    assert package.built() is None
    assert package.changes() == ["patches: 0001-xsc.patch changed"]
    assert package.row().state == "stale"


def test_an_unknown_package_kind_is_refused_before_any_build(fake_project: FakeProject,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fake_project.run("kernel", "--packages", "deb-image,deb-headers")
    assert exc.value.code == ExitCode.USER
    err = capsys.readouterr().err
    assert "kernel package kind(s) deb-headers unknown (choose from deb-image, deb-libc-dev, rpm, " in err
    assert not (fake_project.work / "kernel").exists()


def test_kernel_json_carries_the_packages_metadata(fake_project: FakeProject,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel", "--packages", "deb-image", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    (meta,) = out["packages"]
    assert meta["kind"] == "deb-image" and meta["kernel_key"] == out["kernel"]["key"]
    assert meta["packages"][0]["file"] == f"linux-image-{RELEASE}_{RELEASE}-1_amd64.deb"
