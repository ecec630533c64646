"""The project's guest tests (tests/guest/) in the real Debian ISO: compiled in a bookworm build root
against the built linux-libc-dev and our glibc, carried in on a second drive, run by the boot check
after its markers, reported per test (JSON, JUnit, status), failing the verdict by name."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from builder.infra.errors import ExitCode
from tests.conftest import Events
from tests.real.conftest import REPO, run

pytestmark = pytest.mark.real

EXAMPLES = ["glibc_banner", "xsc_features", "xsc_trap_guard", "xsc_version"]


@pytest.fixture
def with_tests(project: Path) -> Path:
    shutil.copytree(REPO / "tests" / "guest", project / "tests" / "guest")
    return project


def settings(project: Path, **smoke: object) -> None:
    data = yaml.safe_load((project / "isobuild.yaml").read_text())
    data.setdefault("smoke", {}).update(smoke)
    (project / "isobuild.yaml").write_text(yaml.safe_dump(data))


def test_the_example_tests_pass_in_the_booted_image(with_tests: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(with_tests, "debian", "--profile", "ci", "--modes", "bios-cd") == 0, capsys.readouterr().err
    [result] = json.loads((with_tests / "logs" / "smoke-debian.json").read_text())
    assert [(t["name"], t["status"], t["exit"]) for t in result["tests"]] == [(n, "pass", 0) for n in EXAMPLES]
    banner = next(t for t in result["tests"] if t["name"] == "glibc_banner")
    assert any("XSC extensions: xsc-glibc" in line for line in banner["output"])
    suite = ET.parse(with_tests / "logs" / "smoke-debian.xml").getroot()
    cases = {c.get("name") for c in suite.findall("testcase") if c.get("classname") == "guest.debian.bios-cd"}
    assert cases == set(EXAMPLES) and suite.get("failures") == "0"
    capsys.readouterr()
    assert run(with_tests, "status", "--profile", "ci", "--json") == 0
    rows = {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[("guest-tests", "debian")]["state"] == "built"
    assert rows[("smoke", "debian/bios-cd")]["detail"].startswith("guest tests 4/4 pass")


def test_a_failing_or_hanging_test_fails_the_verdict_by_name_and_the_others_still_run(
        with_tests: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guest = with_tests / "tests" / "guest"
    (guest / "aa_hang.sh").write_text("#!/bin/sh\nsleep 600\n")
    (guest / "zz_broken.sh").write_text("#!/bin/sh\necho 'not ok 1 - broken on purpose'\nexit 3\n")
    settings(with_tests, test_timeout=5)
    assert run(with_tests, "debian", "--profile", "ci", "--modes", "bios-cd") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "boot check failed in bios-cd: guest test aa_hang: timeout (exit 124" in err
    # its seconds are whole ones from the guest's clock: 0 or 1 for a test that exits at once
    assert re.search(r"guest test zz_broken: fail \(exit 3, [01] s\): not ok 1 - broken on purpose", err)
    [result] = json.loads((with_tests / "logs" / "smoke-debian.json").read_text())
    statuses = {t["name"]: t["status"] for t in result["tests"]}
    assert statuses == {"aa_hang": "timeout", **{n: "pass" for n in EXAMPLES}, "zz_broken": "fail"}
    # --tests: the chosen ones only (the drive lists just them); an unknown name is refused first
    assert run(with_tests, "test", "debian", "--profile", "ci", "--modes", "bios-cd", "--tests", "xsc_version") == 0
    [result] = json.loads((with_tests / "logs" / "smoke-debian.json").read_text())
    assert [t["name"] for t in result["tests"]] == ["xsc_version"]
    capsys.readouterr()
    assert run(with_tests, "test", "debian", "--modes", "bios-cd", "--tests", "xsc_version,nope") == ExitCode.USER
    assert "--tests: no guest test named nope" in capsys.readouterr().err


def test_a_test_that_crashes_the_guest_fails_the_verdict_naming_it(with_tests: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (with_tests / "tests" / "guest" / "zz_crash.sh").write_text("#!/bin/sh\necho c > /proc/sysrq-trigger\n")
    assert run(with_tests, "debian", "--profile", "ci", "--modes", "bios-cd", "--tests",
               "xsc_version,zz_crash") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "boot check failed in bios-cd: kernel panic: Kernel panic - not syncing: sysrq triggered crash" in err
    assert "guest test zz_crash: crashed" in err
    assert "console log:" in err  # with its tail
    [result] = json.loads((with_tests / "logs" / "smoke-debian.json").read_text())
    assert [(t["name"], t["status"]) for t in result["tests"]] == [("xsc_version", "pass"), ("zz_crash", "crashed")]


def test_a_test_that_does_not_compile_fails_before_any_boot(with_tests: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (with_tests / "tests" / "guest" / "bad_header.c").write_text(
        "#include <linux/xsc.h>\nint main(void) { return XSC_VERSION_NO_SUCH_FIELD; }\n")
    events = Events(with_tests / "logs")
    assert run(with_tests, "debian", "--profile", "ci", "--modes", "bios-cd") == ExitCode.USER
    err = capsys.readouterr().err
    assert "guest test bad_header does not compile against the built headers and glibc (x86_64):" in err
    assert "XSC_VERSION_NO_SUCH_FIELD" in err
    assert not any("qemu-system" in c for c in events.commands()), "nothing booted"


def test_the_image_is_the_same_with_or_without_tests(with_tests: Path) -> None:
    assert run(with_tests, "debian", "--profile", "ci", "--no-smoke") == 0
    image = with_tests / "iso" / "debian" / "isobuild-debian.iso"
    with_them = hashlib.sha256(image.read_bytes()).hexdigest()
    settings(with_tests, guest_tests=None)
    image.unlink()
    assert run(with_tests, "debian", "--profile", "ci", "--no-smoke") == 0
    assert hashlib.sha256(image.read_bytes()).hexdigest() == with_them
