"""The real tier for ``isobuild patches``: the example XSC series against
Debian's real linux-source-6.1, through the CLI, with real quilt.

The pristine tree is extracted once into the shared test work dir (about
half a minute cold); after that each check takes well under a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.real.conftest import REPO, run

pytestmark = pytest.mark.real

SERIES = ["0001-xsc-add-uapi-header.patch", "0002-xsc-add-extended-syscall-driver.patch",
          "0003-xsc-add-trap-guard.patch"]


def check(project: Path, capsys: pytest.CaptureFixture[str], verb: str = "check") -> tuple[int, dict]:  # type: ignore[type-arg]
    capsys.readouterr()
    code = run(project, "patches", verb, "--component", "kernel", "--json")
    return code, json.loads(capsys.readouterr().out)["components"][0]


def test_example_series_is_clean_on_linux_source_6_1(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, rep = check(project, capsys)
    assert code == 0
    assert rep["source"].startswith("linux-source-6.1 ")
    assert [(p["name"], p["status"]) for p in rep["patches"]] == [(n, "clean") for n in SERIES]
    assert rep["seconds"]["apply"] < 10, "a check takes seconds once the pristine tree is cached"


def test_refresh_puts_a_moved_hunk_back_exactly(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patch = project / "patches" / "kernel" / SERIES[1]
    patch.write_text(patch.read_text().replace("@@ -515,4 +515,5 @@", "@@ -510,4 +510,5 @@"))
    code, rep = check(project, capsys)
    assert code == 0, "an offset applies at fuzz 0: a warning, not a failure"
    assert [p["status"] for p in rep["patches"]] == ["clean", "offset", "clean"]
    assert rep["patches"][1]["hunks"] == [
        {"file": "drivers/misc/Kconfig", "hunk": 1, "line": 515, "offset": 5, "fuzz": 0}]
    code, rep = check(project, capsys, "refresh")
    assert code == 0 and rep["refreshed"] == [SERIES[1]]
    # the example series is written the way quilt refresh writes: the refreshed
    # patch is byte for byte the one in the repository, header included
    assert patch.read_bytes() == (REPO / "patches" / "kernel" / SERIES[1]).read_bytes()
    code, rep = check(project, capsys)
    assert code == 0 and rep["status"] == "clean"


def test_glibc_series_is_clean_on_debians_patched_glibc(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(project, "patches", "check", "--component", "glibc", "--json") == 0
    rep = json.loads(capsys.readouterr().out)["components"][0]
    assert rep["source"].startswith("glibc-source ")
    assert [(p["name"], p["status"]) for p in rep["patches"]] == [("0001-csu-xsc-banner-marker.patch", "clean")]
    # a hunk made against upstream's banner (Debian changed nothing there) but with stale context fails, named
    patch = project / "patches/glibc/0001-csu-xsc-banner-marker.patch"
    stale = patch.read_text().replace(' #endif\n "For bug reporting', ' #endif /* stale */\n "For bug reporting')
    patch.write_text(stale)
    capsys.readouterr()
    assert run(project, "patches", "check", "--component", "glibc", "--json") == 2
    rep = json.loads(capsys.readouterr().out)["components"][0]
    assert rep["patches"][0]["status"] in ("fuzz", "fails")
