"""The build report in a real browser: Debian's chromium, headless, loads the page and dumps
the DOM it built; the stage rows, the verdicts and the escaped console logs must be in it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.commands import status
from builder.infra.config import load_project
from tests.conftest import FakeProject
from tests.orchestration.test_report import HOSTILE, expected_rows, make_state, parse
from tests.real.conftest import run

pytestmark = pytest.mark.real


def chromium_dom(page: Path, tmp: Path) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install chromium (isobuild doctor --install)")
    argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--dump-dom", page.as_uri()]
    # stdout is the DOM; chromium's stderr (dbus chatter in a container) is kept apart
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_renders_the_report_of_a_fake_state(fake_project: FakeProject, tmp_path: Path) -> None:
    make_state(fake_project)
    page = tmp_path / "report.html"
    assert fake_project.run("report", "--out", str(page)) == 0
    dom = parse(chromium_dom(page, tmp_path))
    assert dom.rows == expected_rows(status.rows(load_project(fake_project.root / "isobuild.yaml")))
    verdicts = {c["name"]: c["state"] for c in dom.checks}
    assert verdicts == {"ci": "pass", "debian/bios-cd": "pass", "debian/bios-usb": "missing",
                        "debian/uefi-cd": "missing", "debian/uefi-usb": "fail"}
    assert dom.details >= 4, "console logs and packages are collapsible <details>"
    assert "ISOBUILD-MODE uefi-usb" in dom.text and "UNAME: got 6.1.0-other" in dom.text
    # the browser saw the hostile console text as text: no element was made of it
    assert HOSTILE in dom.text and "script" not in dom.tags and "b" not in dom.tags


def test_chromium_renders_the_report_of_the_real_work_dir(project: Path, tmp_path: Path) -> None:
    """The warm test cache's real records (kernel, rootfs, ISO, smoke) as a person would see them."""
    page = tmp_path / "report.html"
    assert run(project, "report", "--profile", "ci", "--out", str(page)) == 0
    rows = status.rows(load_project(project / "isobuild.yaml"), "ci")
    dom = parse(chromium_dom(page, tmp_path))
    assert dom.rows == expected_rows(rows)
    assert {(c["stage"], c["name"]) for c in dom.checks} == {(r.stage, r.name) for r in rows
                                                            if r.stage in ("kernel-boot", "smoke")}
    assert "Patch series" in dom.text and "0001-xsc-add-uapi-header.patch" in dom.text
