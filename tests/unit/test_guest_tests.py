"""Guest tests: discovery, --tests, the console's TEST lines -> per-test results, the verdict, JUnit."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder.infra.errors import UserError
from builder.stages import guesttests, rootfs, smoke
from builder.tools import console

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_tests_are_one_file_each() -> None:
    tests = guesttests.discover(REPO / "tests" / "guest", "tests/guest")
    assert {(t.name, t.kind) for t in tests} == {("glibc_banner", "c"), ("xsc_features", "sh"),
                                                  ("xsc_trap_guard", "c"), ("xsc_version", "c")}


@pytest.mark.parametrize(("files", "message"), [
    ({"a.c": "", "a.sh": ""}, r"two tests are named 'a' \(a.c, a.sh\)"),
    ({"bad name.c": ""}, "'bad name' is not a test name"),
])
def test_bad_test_files_are_refused_naming_them(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        guesttests.discover(tmp_path, "tests/guest")


def test_a_link_is_not_a_test(tmp_path: Path) -> None:
    (tmp_path / "x.c").symlink_to("/etc/passwd")
    with pytest.raises(UserError, match=r"x\.c: a guest test must be a regular file"):
        guesttests.discover(tmp_path, "tests/guest")


def test_tests_option_picks_known_names_only(tmp_path: Path) -> None:
    for name in ("a.c", "b.sh", "README.md"):
        (tmp_path / name).write_text("")
    tests = guesttests.discover(tmp_path, "t")
    assert [t.name for t in guesttests.choose(tests, ["b", "a", "b"])] == ["b", "a"]
    assert guesttests.choose(tests, None) == tests
    with pytest.raises(UserError, match="--tests: no guest test named nope") as exc:
        guesttests.choose(tests, ["a", "nope"])
    assert exc.value.hint == "the tests: a, b"


def _watch(lines: list[str], tests: list[str]) -> console.Verdict:
    watch = console.Watch(console.Expect({"UNAME": "6.1"}, tests=tests))
    for line in ["ISOBUILD-UNAME 6.1", *lines, "ISOBUILD-DONE"]:
        watch.feed(line)
    return watch.verdict(False, None)


def test_test_lines_become_results_and_all_passing_passes() -> None:
    v = _watch(["ISOBUILD-TEST a pass 0 1", "ISOBUILD-TESTOUT a ok 1 - fine", "ISOBUILD-TEST b pass 0 2"], ["a", "b"])
    assert v.status == "pass"
    assert v.tests == [{"name": "a", "status": "pass", "exit": 0, "seconds": 1, "output": ["ok 1 - fine"]},
                       {"name": "b", "status": "pass", "exit": 0, "seconds": 2, "output": []}]
    assert "TEST" not in v.markers and v.as_dict()["tests"] == v.tests


def test_a_failing_hung_or_missing_test_fails_the_verdict_naming_it() -> None:
    v = _watch(["ISOBUILD-TEST a fail 1 0", "ISOBUILD-TESTOUT a not ok 1 - EINVAL expected",
                "ISOBUILD-TEST b timeout 124 60"], ["a", "b", "c"])
    assert v.status == "fail"
    assert v.reasons == ["guest test a: fail (exit 1, 0 s): not ok 1 - EINVAL expected",
                         "guest test b: timeout (exit 124, 60 s)", "guest test c: not-run"]


def test_a_panic_while_tests_run_fails_with_the_console_tail() -> None:
    watch = console.Watch(console.Expect({}, tests=["a"]))
    for line in ["ISOBUILD-TEST a pass 0 1", "Kernel panic - not syncing: Fatal exception", *["x"] * 8]:
        if watch.feed(line):
            break
    v = watch.verdict(False, None)
    assert v.status == "fail" and v.reasons[0].startswith("kernel panic: Kernel panic - not syncing")
    assert any("Kernel panic" in line for line in v.tail)


def test_a_test_running_when_the_kernel_panics_is_named_as_crashed() -> None:
    watch = console.Watch(console.Expect({}, tests=["a", "crash", "z"]))
    for line in ["ISOBUILD-TESTSTART a", "ISOBUILD-TEST a pass 0 1", "ISOBUILD-TESTSTART crash",
                 "sysrq: Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash", *["x"] * 8]:
        if watch.feed(line):
            break
    v = watch.verdict(False, None)
    assert [(t["name"], t["status"]) for t in v.tests] == [("a", "pass"), ("crash", "crashed"), ("z", "not-run")]
    assert v.reasons[0] == "kernel panic: Kernel panic - not syncing: sysrq triggered crash"
    assert "guest test crash: crashed" in v.reasons
    hung = console.Watch(console.Expect({}, tests=["h"]))
    hung.feed("ISOBUILD-TESTSTART h")
    assert hung.verdict(True, None).tests[0]["status"] == "hung"


def test_junit_has_a_testcase_per_guest_test_and_mode() -> None:
    v = _watch(["ISOBUILD-TEST a pass 0 1", "ISOBUILD-TEST b fail 3 0", "ISOBUILD-TESTOUT b boom"], ["a", "b"])
    v.extra["mode"] = "uefi-cd"
    suite = ET.fromstring(smoke.junit("debian-arm64", [v]))
    cases = {(c.get("classname"), c.get("name")): c for c in suite.findall("testcase")}
    assert set(cases) == {("smoke.debian-arm64", "uefi-cd"), ("guest.debian-arm64.uefi-cd", "a"),
                          ("guest.debian-arm64.uefi-cd", "b")}
    failure = cases[("guest.debian-arm64.uefi-cd", "b")].find("failure")
    assert failure is not None and failure.get("message") == "fail (exit 3)"
    assert suite.get("tests") == "3" and suite.get("failures") == "2"


def test_the_boot_check_runs_the_tests_drive_with_each_timeout() -> None:
    script = rootfs.smoke_script("/sys/kernel/xsc/version")
    assert "tests=/dev/disk/by-id/virtio-isobuild-tests" in script
    assert 'timeout -k 5 "$limit"' in script and script.rstrip().endswith("say DONE")
    assert "{GUEST_TESTS}" not in script  # the placeholder is filled in
