"""The glibc stage on another suite's source package, fetched from a (fake, signed) archive: the
``apt-get source`` path a riscv64 image takes (trixie's glibc on a bookworm host).  The fake source
package is made with the real dpkg-source from tests/orchestration/fakeglibc and built natively
(seconds); the cross build in a build root is the real tier's (tests/real/test_real_images.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import cli
from builder.infra.errors import ExitCode
from tests.conftest import REPO, Events, make_patch, records, write_series
from tests.fakemirror import Mirror
from tests.orchestration.test_glibc_fake import FAKEGLIBC, PATCHED, UPSTREAM, XSC_PATCH, banner, first_error_line

SUITE = "sid-test"  # never the host's own codename: the archive path, not glibc-source


def source_package(tmp_path: Path, version: str) -> dict[str, bytes]:
    """glibc <version> as Debian ships a source package (.dsc, .orig.tar.xz, .debian.tar.xz), by dpkg-source."""
    build = tmp_path / f"src-{version}"
    tree = build / "glibc-1.0"
    shutil.copytree(FAKEGLIBC / "upstream", tree)
    subprocess.run(["tar", "-C", str(build), "-cJf", str(build / "glibc_1.0.orig.tar.xz"), "glibc-1.0"], check=True)
    shutil.copytree(FAKEGLIBC / "debian", tree / "debian")
    changelog = tree / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace("glibc (1.0-1)", f"glibc ({version})", 1))
    subprocess.run(["dpkg-source", "-b", "glibc-1.0"], cwd=build, check=True, capture_output=True)
    return {f.name: f.read_bytes() for f in build.iterdir() if f.is_file()}


class Archive:
    def __init__(self, tmp_path: Path, versions: list[str]):
        self.mirror = Mirror.create(tmp_path / "mirror")
        for version in versions:
            self.mirror.add_source(SUITE, "glibc", version, source_package(tmp_path, version))
        self.mirror.publish(SUITE, architectures="amd64 arm64 riscv64")

    def pool_file(self, name: str) -> Path:
        return self.mirror.root / "pool" / "main" / "g" / "glibc" / name


@pytest.fixture
def archive_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    root, work = tmp_path / "project", tmp_path / "work"
    (root / "distros").mkdir(parents=True)
    (root / "patches" / "glibc").mkdir(parents=True)
    write_series(root / "patches" / "glibc", {"0001-xsc-banner.patch": XSC_PATCH})
    (root / "isobuild.yaml").write_text(yaml.safe_dump({
        "work_dir": str(work),
        "glibc": {"packaging_patches": None, "profiles": ["nobiarch", "noudeb"], "install_build_deps": False}}))
    monkeypatch.chdir(root)
    yield root, work
    os.chdir(REPO)


def use(root: Path, archive: Archive) -> None:
    shutil.copy(archive.mirror.keyring, root / "keyring.gpg")
    (root / "distros" / "debian.yaml").write_text(yaml.safe_dump({
        "family": "debian", "suite": SUITE, "mirror": archive.mirror.uri, "keyring": "keyring.gpg"}))


def run(root: Path, *args: str) -> int:
    return cli.main(["-c", str(root / "isobuild.yaml"), *args])


def metadata(root: Path, work: Path) -> Any:
    return json.loads((records(root, work) / "current" / "glibc-x86_64" / "metadata.json").read_text())


def test_another_suites_glibc_comes_from_its_source_package_verified(
        archive_project: tuple[Path, Path], tmp_path: Path) -> None:
    root, work = archive_project
    use(root, Archive(tmp_path, ["1.0-1"]))
    assert run(root, "glibc") == 0
    meta = metadata(root, work)
    assert meta["version"] == "1.0-1+isobuild1"
    source = meta["inputs"]["source"]
    assert (source["kind"], source["suite"], source["version"]) == ("archive", SUITE, "1.0-1")
    libc6 = next(x["file"] for x in meta["packages"] if x["package"] == "libc6")
    out = banner(records(root, work) / "current" / "glibc-x86_64" / "debs" / libc6, tmp_path / "x")
    # Debian's series applied by dpkg-source, ours on top
    assert "Debian: patched by its series." in out and "XSC extensions: fake 1" in out
    cached = list((work / "cache" / "archive" / "pool").rglob("*"))
    assert len([c for c in cached if c.is_file()]) == 3, "the .dsc and both tarballs, cached by sha256"


def test_a_version_the_mirror_lacks_falls_back_to_the_newest_it_serves(
        archive_project: tuple[Path, Path], tmp_path: Path) -> None:
    root, work = archive_project
    archive = Archive(tmp_path, ["1.0-1", "1.0-2"])
    archive.pool_file("glibc_1.0-2.dsc").unlink()  # listed in the signed index, 404 on the mirror
    use(root, archive)
    events = Events(root / "logs")
    assert run(root, "glibc") == 0
    assert metadata(root, work)["inputs"]["source"]["version"] == "1.0-1"
    assert any(e.get("event") == "glibc.source-missing" and e.get("missing") == ["1.0-2"] for e in events.new())


def test_a_source_file_not_matching_the_signed_index_is_refused_and_not_cached(
        archive_project: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, work = archive_project
    archive = Archive(tmp_path, ["1.0-1"])
    orig = archive.pool_file("glibc_1.0.orig.tar.xz")
    orig.write_bytes(orig.read_bytes() + b"tampered")
    use(root, archive)
    assert run(root, "glibc") == ExitCode.USER
    err = first_error_line(capsys.readouterr().err)
    assert "glibc_1.0.orig.tar.xz has sha256" in err and "refused, nothing cached" in err
    cached = {c.name for c in (work / "cache" / "archive" / "pool").rglob("*") if c.is_file()}
    assert hashlib.sha256(orig.read_bytes()).hexdigest() not in cached and len(cached) == 2, \
        "the verified .dsc and .debian.tar.xz only"
    assert not (records(root, work) / "current" / "glibc-x86_64").exists()


def test_our_patch_failing_on_that_version_names_patch_file_hunk_and_version(
        archive_project: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _work = archive_project
    use(root, Archive(tmp_path, ["1.0-1"]))
    against_upstream = make_patch("version.c", UPSTREAM, UPSTREAM.replace("the fake.", "the fake!"))
    write_series(root / "patches" / "glibc", {"0001-stale.patch": against_upstream})
    events = Events(root / "logs")
    assert run(root, "glibc") == ExitCode.USER
    assert "dpkg-buildpackage" not in events.commands(), "refused before the build"
    assert first_error_line(capsys.readouterr().err) == (
        "isobuild: error: patch isobuild/0001-stale.patch does not apply at fuzz 0 to Debian's patched glibc 1.0-1: "
        "version.c hunk #1 (at line 2): hunk does not apply")


def test_a_series_of_its_own_for_that_upstream_version_is_used(
        archive_project: tuple[Path, Path], tmp_path: Path) -> None:
    root, work = archive_project
    use(root, Archive(tmp_path, ["1.0-1"]))
    (root / "patches" / "glibc" / "series").write_text("0001-does-not-exist.patch\n")  # the 2.36 one, say
    variant = make_patch("version.c", PATCHED, PATCHED.replace(
        '"Debian: patched by its series.\\n";', '"Debian: patched by its series.\\n"\n"XSC extensions: v1.0\\n";'))
    (root / "patches" / "glibc" / "1.0").mkdir()
    write_series(root / "patches" / "glibc" / "1.0", {"0001-xsc-for-1.0.patch": variant})
    assert run(root, "glibc") == 0
    meta = metadata(root, work)
    assert [p["name"] for p in meta["patches"]] == ["0001-xsc-for-1.0.patch"]
