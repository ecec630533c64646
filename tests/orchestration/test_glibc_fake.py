"""Orchestration of the glibc stage on a tiny fake Debian source package
(tests/orchestration/fakeglibc: an upstream tarball + a debian/ dir with its
own quilt series).  Real quilt, real dpkg-buildpackage, real debhelper;
each build takes seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import cli
from builder.infra.errors import ExitCode
from tests.conftest import REPO, Events, make_patch, record_path, records, sha256, write_series

FAKEGLIBC = Path(__file__).parent / "fakeglibc"
UPSTREAM = (FAKEGLIBC / "upstream" / "version.c").read_text()
DEBIAN_LINE = '"For bug reporting instructions, please see the fake.\\n"\n"Debian: patched by its series.\\n";'
PATCHED = UPSTREAM.replace('"For bug reporting instructions, please see the fake.\\n";', DEBIAN_LINE)
XSC = PATCHED.replace('"Debian: patched by its series.\\n";',
                      '"Debian: patched by its series.\\n"\n"XSC extensions: fake 1\\n";')
XSC_PATCH = make_patch("version.c", PATCHED, XSC, "Subject: XSC banner line\n\n")


@dataclass
class GlibcProject:
    root: Path
    work: Path
    debian: Path
    tarball: Path

    def settings(self) -> Any:
        return yaml.safe_load((self.root / "isobuild.yaml").read_text())

    def write_settings(self, data: dict) -> None:  # type: ignore[type-arg]
        (self.root / "isobuild.yaml").write_text(yaml.safe_dump(data))

    def set_glibc(self, **values: object) -> None:
        data = self.settings()
        data["glibc"].update(values)
        self.write_settings(data)

    def set_series(self, patches: dict[str, str]) -> None:
        write_series(self.root / "patches" / "glibc", patches)

    def run(self, *args: str) -> int:
        return cli.main(["-c", str(self.root / "isobuild.yaml"), *args])

    @property
    def current(self) -> Path:
        """The link to this project's last good glibc packages."""
        return records(self.root, self.work) / "current" / "glibc-x86_64"

    def metadata(self) -> Any:
        return json.loads((self.current / "metadata.json").read_text())


def make_tarball(dest: Path, prepatched: bool) -> Path:
    tree = dest.parent / "fakeglibc-1.0"
    shutil.copytree(FAKEGLIBC / "upstream", tree)
    if prepatched:  # what Debian's glibc-source ships: its series already applied
        (tree / "version.c").write_text(PATCHED)
    with tarfile.open(dest, "w:xz") as tar:
        tar.add(tree, arcname="fakeglibc-1.0")
    shutil.rmtree(tree)
    return dest


def new_project(tmp_path: Path, prepatched: bool = False) -> GlibcProject:
    tarball = make_tarball(tmp_path / "fakeglibc-1.0.tar.xz", prepatched)
    root = tmp_path / "project"
    debian = root / "packaging" / "debian"  # a packaging dir of the project's own (or under /usr/src)
    shutil.copytree(FAKEGLIBC / "debian", debian)
    (root / "patches" / "glibc").mkdir(parents=True)
    work = tmp_path / "work"
    project = GlibcProject(root, work, debian, tarball)
    project.write_settings({
        "work_dir": str(work),
        "glibc": {"source": {"type": "tarball", "path": str(tarball), "sha256": sha256(tarball),
                             "debian_dir": str(debian)},
                  "packaging_patches": None, "profiles": ["nobiarch", "noudeb"],
                  "install_build_deps": False},
    })
    project.set_series({"0001-xsc-banner.patch": XSC_PATCH})
    return project


@pytest.fixture
def glibc_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GlibcProject]:
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    project = new_project(tmp_path)
    monkeypatch.chdir(project.root)
    yield project
    os.chdir(REPO)


def banner(deb: Path, tmp: Path) -> str:
    """Run the packaged fake libc.so.6, as the boot check runs the real one."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    lib = tmp / "usr/lib/fakelibc/libc.so.6"
    lib.chmod(0o755)  # dh_fixperms makes *.so* 0644; the real libc.so.6 is special-cased
    return subprocess.run([str(lib)], check=True, capture_output=True, text=True).stdout


def first_error_line(err: str) -> str:
    return next((line for line in err.splitlines() if line.startswith("isobuild: error:")), "")


def test_builds_the_distributions_packages_with_our_series_and_version(
        glibc_project: GlibcProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert glibc_project.run("glibc") == 0
    meta = glibc_project.metadata()
    assert meta["version"] == "1.0-1+isobuild1" and meta["distro_version"] == "1.0-1"
    assert {(x["package"], x["version"]) for x in meta["packages"]} == {
        ("libc6", "1.0-1+isobuild1"), ("libc-bin", "1.0-1+isobuild1")}
    assert meta["patches"][0]["name"] == "0001-xsc-banner.patch"
    assert meta["inputs"]["source"]["debian"], "Debian's packaging is part of the key"
    assert set(meta["durations"]) == {"patch", "build-deps", "compile"}
    assert "DEB_BUILD_PROFILES=" in meta["reproducer"]["dpkg-buildpackage"]
    libc6 = glibc_project.current / "debs" / next(x["file"] for x in meta["packages"] if x["package"] == "libc6")
    out = banner(libc6, tmp_path / "x")
    # Debian's series (applied by quilt: the tarball is pristine), then ours on top
    assert "Debian: patched by its series." in out and "XSC extensions: fake 1" in out
    tree = glibc_project.work / "glibc" / "trees" / meta["key"][:16] / "src"
    assert (tree / "debian/patches/series").read_text().splitlines()[-1] == "isobuild/0001-xsc-banner.patch"
    assert (tree / "debian/changelog").read_text().startswith("glibc (1.0-1+isobuild1) bookworm; urgency=medium")
    assert "built:" in capsys.readouterr().out
    # nothing changed: no rebuild
    events = Events(glibc_project.root / "logs")
    assert glibc_project.run("glibc") == 0
    assert events.built() == set() and "dpkg-buildpackage" not in events.commands()
    assert "is up to date" in capsys.readouterr().out


def test_a_source_that_already_carries_debians_series_like_glibc_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    project = new_project(tmp_path, prepatched=True)
    assert project.run("glibc") == 0
    meta = project.metadata()
    libc6 = next(x["file"] for x in meta["packages"] if x["package"] == "libc6")
    out = banner(project.current / "debs" / libc6, tmp_path / "x")
    assert out.count("Debian: patched by its series.") == 1 and "XSC extensions: fake 1" in out
    applied = (project.work / "glibc/trees" / meta["key"][:16] / "src/.pc/applied-patches").read_text().split()
    assert applied == ["debian-banner.diff", "isobuild/0001-xsc-banner.patch"]


def test_a_patch_that_does_not_apply_on_debians_tree_fails_in_seconds_and_keeps_the_last_good(
        glibc_project: GlibcProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert glibc_project.run("glibc") == 0
    good = glibc_project.current.resolve()
    # made against upstream, not against Debian's patched tree: the context differs
    against_upstream = make_patch("version.c", UPSTREAM, UPSTREAM.replace(
        '"For bug reporting instructions, please see the fake.\\n";',
        '"For bug reporting instructions, please see the fake.\\n"\n"XSC extensions: fake 2\\n";'))
    glibc_project.set_series({"0002-against-upstream.patch": against_upstream})
    capsys.readouterr()
    events = Events(glibc_project.root / "logs")
    assert glibc_project.run("glibc") == ExitCode.USER
    assert "dpkg-buildpackage" not in events.commands(), "refused before the long build"
    err = first_error_line(capsys.readouterr().err)
    assert "patch isobuild/0002-against-upstream.patch does not apply at fuzz 0 to Debian's patched glibc 1.0-1" \
        in err
    assert "version.c hunk #1" in err
    assert glibc_project.current.resolve() == good
    state = json.loads(record_path(glibc_project.root, glibc_project.work, "glibc-x86_64").read_text())
    assert state["status"] == "failed" and state["last_good"] == good.name
    # the last good build's tree (where glibc --tests runs) is untouched by the failed one
    assert (glibc_project.work / "glibc/trees" / good.name[:16] / "tree.json").exists()


def test_a_version_that_would_downgrade_the_distributions_is_refused(
        glibc_project: GlibcProject, capsys: pytest.CaptureFixture[str]) -> None:
    glibc_project.set_glibc(suffix="~isobuild1")
    assert glibc_project.run("glibc") == ExitCode.USER
    err = capsys.readouterr().err
    assert "glibc 1.0-1~isobuild1 would downgrade the distribution's 1.0-1" in first_error_line(err)
    assert "glibc.suffix" in err
    assert not (glibc_project.work / "glibc").exists(), "refused before anything was prepared"


def test_a_missing_build_dependency_is_named(glibc_project: GlibcProject,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    control = glibc_project.debian / "control"
    control.write_text(control.read_text().replace(
        "Build-Depends: debhelper-compat (= 13)",
        "Build-Depends: debhelper-compat (= 13), isobuild-no-such-package (>= 1)"))
    assert glibc_project.run("glibc") == ExitCode.USER
    err = capsys.readouterr().err
    assert "glibc build dependencies missing: isobuild-no-such-package (>= 1)" in first_error_line(err)
    assert "glibc.install_build_deps" in err
    # allowed to install them: apt cannot, which is an infrastructure error naming them
    glibc_project.set_glibc(install_build_deps=True)
    assert glibc_project.run("glibc") == ExitCode.INFRA
    assert "isobuild-no-such-package" in first_error_line(capsys.readouterr().err)
    assert not glibc_project.current.exists()


def test_a_build_failure_shows_the_compiler_lines(glibc_project: GlibcProject,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    broken = make_patch("version.c", PATCHED, PATCHED.replace("return 0;", "return 0 +;"))
    glibc_project.set_series({"0001-broken.patch": broken})
    assert glibc_project.run("glibc") == ExitCode.USER
    err = capsys.readouterr().err
    assert first_error_line(err).startswith("isobuild: error: glibc build failed:")
    assert "version.c" in err and "error:" in err
    assert "full log:" in err or "log:" in err


def test_an_interrupted_build_keeps_the_last_good_packages(glibc_project: GlibcProject) -> None:
    assert glibc_project.run("glibc") == 0
    good = glibc_project.current.resolve()
    makefile = (FAKEGLIBC / "upstream" / "Makefile").read_text()
    slow = make_patch("Makefile", makefile, makefile.replace("libc.so.6: version.c\n",
                                                             "libc.so.6: version.c\n\tsleep 60\n"))
    glibc_project.set_series({"0001-xsc-banner.patch": XSC_PATCH, "0002-slow.patch": slow})
    proc = subprocess.Popen([sys.executable, "-m", "builder", "-c", str(glibc_project.root / "isobuild.yaml"),
                             "glibc"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_file = record_path(glibc_project.root, glibc_project.work, "glibc-x86_64")
    deadline = time.monotonic() + 30
    events = glibc_project.root / "logs" / "isobuild.jsonl"
    while time.monotonic() < deadline:
        if events.exists() and events.read_text().count("glibc.compile.start") == 2:
            time.sleep(2)  # dpkg-buildpackage is under way, make is about to sleep
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the build never reached its slow step")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted; the last good artifacts are kept" in err
    assert json.loads(state_file.read_text())["status"] == "interrupted"
    assert glibc_project.current.resolve() == good
    assert json.loads((good / "metadata.json").read_text())["version"] == "1.0-1+isobuild1"


def test_status_names_the_changed_patch(glibc_project: GlibcProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert glibc_project.run("status", "--json") == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["stage"] == "glibc")
    assert row["state"] == "missing"
    assert glibc_project.run("glibc") == 0
    capsys.readouterr()
    assert glibc_project.run("status", "--json") == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["stage"] == "glibc")
    assert row["state"] == "built" and row["detail"].startswith("1.0-1+isobuild1, 2 packages")
    glibc_project.set_series({"0001-xsc-banner.patch": XSC_PATCH.replace("fake 1", "fake 9")})
    assert glibc_project.run("status", "--json") == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["stage"] == "glibc")
    assert row["state"] == "stale" and "0001-xsc-banner.patch" in row["detail"]


def test_packaging_patches_apply_to_debian_dir_and_a_bad_one_is_named(
        glibc_project: GlibcProject, capsys: pytest.CaptureFixture[str]) -> None:
    rules = (FAKEGLIBC / "debian" / "rules").read_text()
    packaging = glibc_project.root / "patches" / "glibc-debian"
    packaging.mkdir()
    marked = rules.replace("override_dh_auto_install:\n",
                           "override_dh_auto_install:\n\t@echo ISOBUILD-PACKAGING-PATCH\n")
    good = make_patch("debian/rules", rules, marked)
    (packaging / "0001-good.patch").write_text(good)
    (packaging / "series").write_text("0001-good.patch\n")
    glibc_project.set_glibc(packaging_patches="patches/glibc-debian")
    assert glibc_project.run("glibc") == 0
    meta = glibc_project.metadata()
    assert [x["name"] for x in meta["packaging_patches"]] == ["0001-good.patch"]
    assert "ISOBUILD-PACKAGING-PATCH" in Path(meta["log"]).read_text()
    bad = make_patch("debian/rules", rules.replace("dh $@", "dh $@ --with nothing"), rules)
    (packaging / "0002-bad.patch").write_text(bad)
    (packaging / "series").write_text("0001-good.patch\n0002-bad.patch\n")
    capsys.readouterr()
    assert glibc_project.run("glibc") == ExitCode.USER
    err = first_error_line(capsys.readouterr().err)
    assert "packaging patch 0002-bad.patch does not apply at fuzz 0 to the glibc packaging" in err
    assert "debian/rules hunk #1" in err


def test_clean_drops_the_build_tree_and_superseded_packages_keeps_current(
        glibc_project: GlibcProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert glibc_project.run("glibc") == 0
    first = glibc_project.current.resolve()
    glibc_project.set_series({"0001-xsc-banner.patch": XSC_PATCH.replace("fake 1", "fake 2")})
    assert glibc_project.run("glibc") == 0
    second = glibc_project.current.resolve()
    capsys.readouterr()
    assert glibc_project.run("clean") == 0
    out = capsys.readouterr().out
    trees = glibc_project.work / "glibc" / "trees"
    assert f"removed {first}" in out and f"removed {trees / second.name[:16]}" in out
    assert not first.exists() and not any(trees.iterdir())
    assert second.is_dir() and glibc_project.current.resolve() == second
    assert glibc_project.run("glibc") == 0
    assert "is up to date" in capsys.readouterr().out, "the current packages survived"


def test_a_good_build_supersedes_only_its_own_arch_trees(glibc_project: GlibcProject) -> None:
    trees = glibc_project.work / "glibc" / "trees"
    other_arch, same_arch = trees / "0123456789abcdef", trees / "fedcba9876543210"
    for tree, arch in ((other_arch, "arm64"), (same_arch, "x86_64")):
        tree.mkdir(parents=True)
        (tree / "tree.json").write_text(json.dumps({"key": "k", "arch": arch}))
    assert glibc_project.run("glibc") == 0
    kept = glibc_project.work / "glibc" / "trees" / glibc_project.metadata()["key"][:16]
    assert json.loads((kept / "tree.json").read_text())["arch"] == "x86_64"
    assert other_arch.exists(), "another arch's last good tree (its root, its tests) stays"
    assert not same_arch.exists(), "this arch's older tree is superseded"
