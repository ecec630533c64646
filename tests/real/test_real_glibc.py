"""The real glibc stage: Debian's glibc-source (its series already in the
tarball), our packaging patch and series appended at fuzz 0, the real
dpkg-buildpackage build of libc6/libc-bin/... (~12 min cold on 2 cores; the
ISO test in test_real_debian.py installs and boots it), glibc's own tests in
the kept tree, and a bad patch reported in seconds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.infra.errors import ExitCode
from tests.conftest import Events
from tests.real.conftest import WORK, current, run

pytestmark = pytest.mark.real


def test_glibc_builds_debians_packages_with_the_xsc_banner(project: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "glibc") == 0, capsys.readouterr().err
    meta = json.loads((current(project, "glibc-x86_64") / "metadata.json").read_text())
    distro = meta["distro_version"]
    assert meta["version"] == f"{distro}+isobuild1"
    names = {x["package"]: x["version"] for x in meta["packages"]}
    assert {"libc6", "libc-bin", "libc6-dev", "libc-dev-bin"} <= set(names)
    assert set(names.values()) == {meta["version"]}
    assert "locales-all" not in names and "libc6-i386" not in names and "libc6-udeb" not in names
    assert [x["name"] for x in meta["patches"]] == ["0001-csu-xsc-banner-marker.patch"]
    assert [x["name"] for x in meta["packaging_patches"]] == ["0001-pkg.glibc.nolocalesall.patch"]
    # run the packaged libc.so.6 (with the packaged dynamic loader): the banner carries the marker
    libc6 = next(x["file"] for x in meta["packages"] if x["package"] == "libc6")
    deb = current(project, "glibc-x86_64") / "debs" / libc6
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")], check=True)
    libdir = next((tmp_path / "root").glob("lib/*-linux-gnu"))
    loader = next((tmp_path / "root").glob("lib*/ld-linux-*.so.2"))
    banner = subprocess.run([str(loader), "--library-path", str(libdir), str(libdir / "libc.so.6")],
                            capture_output=True, text=True, check=True).stdout
    assert f"GNU C Library (Debian GLIBC {meta['version']})" in banner
    assert banner.rstrip().endswith("XSC extensions: xsc-glibc 1.0")


def _tree_kept(key: str) -> bool:
    """Whether the work dir keeps the build tree of the glibc with this key (isobuild clean drops it,
    and a glibc pulled from a stage store never had one here)."""
    return any((json.loads(m.read_text()).get("key") == key) for m in (WORK / "glibc/trees").glob("*/tree.json"))


def test_glibc_tests_run_in_the_kept_tree_without_a_rebuild(project: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "glibc") == 0
    if not _tree_kept(current(project, "glibc-x86_64").name):  # what this test needs: the tree of a build here
        assert run(project, "glibc", "--force") == 0
    capsys.readouterr()
    events = Events(project / "logs")
    assert run(project, "glibc", "--tests", "string/test-strlen,csu/test-as-const-tcb-offsets") == 0, \
        capsys.readouterr().err
    assert events.built() == set() and "dpkg-buildpackage" not in events.commands(), "tests only: no rebuild"
    out = capsys.readouterr().out
    assert "is up to date" in out and "test string/test-strlen: PASS" in out
    meta = json.loads((current(project, "glibc-x86_64") / "metadata.json").read_text())
    assert meta["tests"]["string/test-strlen"] == "PASS"
    assert run(project, "glibc", "--tests", "nosuchdir/tst-x") == ExitCode.USER
    assert "no nosuchdir/ directory in the glibc source" in capsys.readouterr().err


def test_a_glibc_patch_that_does_not_apply_to_debians_tree_fails_in_seconds(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "glibc") == 0  # this project's last good packages (the cached build)
    series = project / "patches/glibc"
    (series / "0002-stale.patch").write_text(
        "--- a/csu/version.c\n+++ b/csu/version.c\n@@ -24,3 +24,3 @@\n"
        " static const char __libc_version[] = VERSION;\n-static const char banner[] = \"not what is there\";\n"
        "+static const char banner[] = \"ours\";\n \n")
    (series / "series").write_text((series / "series").read_text() + "0002-stale.patch\n")
    events = Events(project / "logs")
    assert run(project, "glibc") == ExitCode.USER
    assert "dpkg-buildpackage" not in events.commands(), "reported before the long build"
    err = capsys.readouterr().err
    assert "patch isobuild/0002-stale.patch does not apply at fuzz 0 to Debian's patched glibc 2.36-" in err
    assert ": csu/version.c hunk #1" in err
    # the last good packages are untouched and still current
    assert json.loads((current(project, "glibc-x86_64") / "metadata.json").read_text())["patches"][-1]["name"] == \
        "0001-csu-xsc-banner-marker.patch"
