"""isobuild report from a fake state dir: records keyed as ``status`` computes them (a failed
kernel build, a passed kernel boot check, two smoke verdicts with console logs), a manifest in
iso/, the patch series; the page holds all of it, escaped, self-contained."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from builder import pipeline
from builder.commands import report, status
from builder.infra import state
from builder.infra.config import load_project
from builder.stages import smoke
from builder.stages.kernel import KernelStage
from builder.stages.kernelboot import KernelBootCheck
from tests.conftest import FakeProject

REPO = Path(__file__).resolve().parents[2]
HOSTILE = '<script>alert("x")</script> & <b>not bold</b>'


@dataclass
class Dom:
    """What a test needs from a report page (ours, or the DOM a browser made of it)."""

    rows: list[dict[str, str]] = field(default_factory=list)  # tr.stage data-* attributes
    checks: list[dict[str, str]] = field(default_factory=list)  # section.check data-* attributes
    tags: list[str] = field(default_factory=list)
    details: int = 0
    text: str = ""
    attributes: list[tuple[str, str]] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.dom = Dom()
        self.chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.dom.tags.append(tag)
        self.dom.attributes += list(a.items())
        data = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
        if tag == "tr" and a.get("class") == "stage":
            self.dom.rows.append(data)
        elif tag == "section" and a.get("class") == "check":
            self.dom.checks.append(data)
        elif tag == "details":
            self.dom.details += 1

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def parse(html: str) -> Dom:
    parser = _Parser()
    parser.feed(html)
    parser.dom.text = "".join(parser.chunks)
    return parser.dom


def expected_rows(rows: list[status.Row]) -> list[dict[str, str]]:
    return [{"stage": r.stage, "name": r.name, "state": r.state} for r in rows]


def make_state(fp: FakeProject) -> None:
    """Records under the fake project's work dir, keyed by the keys status computes now."""
    (fp.root / "distros").mkdir(exist_ok=True)
    shutil.copy(REPO / "distros" / "debian.yaml", fp.root / "distros")
    (fp.root / "patches" / "glibc").mkdir(parents=True, exist_ok=True)
    (fp.root / "patches" / "glibc" / "0001-banner.patch").write_text("--- a/x\n+++ b/x\n")
    (fp.root / "patches" / "glibc" / "series").write_text("0001-banner.patch\n")
    project = load_project(fp.root / "isobuild.yaml")
    logs = project.logs_dir
    logs.mkdir(parents=True, exist_ok=True)
    ks = KernelStage(project)
    build_log = logs / "kernel-ci-20260101T000000Z.log"
    build_log.write_text("".join(f"  CC drivers/x{i}.o\n" for i in range(300))
                         + f"drivers/xsc.c:3:1: error: expected ';' {HOSTILE}\n")
    state.save(ks.record_path, {"stage": "kernel", "name": "ci", "key": ks.key, "status": "failed",
                                 "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:01:00Z",
                                 "error": "make exited 2", "log": str(build_log)})
    boot_log = logs / "boot-kernel-ci-20260101T000000Z.log"
    boot_log.write_text("Linux version 6.1.0-isobuild\nISOBUILD-UNAME 6.1.0-isobuild\nISOBUILD-MARKER 1.0.0\n")
    state.save(KernelBootCheck(ks).record_path,
               {"stage": "kernel-boot", "key": ks.key, "status": "pass", "reasons": [], "seconds": 3.2,
                "finished": "2026-01-01T00:02:00Z", "log": str(boot_log), "accel": "tcg",
                "markers": {"UNAME": "6.1.0-isobuild", "MARKER": "1.0.0"}})
    iso_stage = pipeline.iso_stage(project, "debian", None)
    verdicts = {"bios-cd": ("pass", []), "uefi-usb": ("fail", ["UNAME: got 6.1.0-other, want 6.1.0-isobuild"])}
    for mode, (verdict, reasons) in verdicts.items():
        console = logs / f"smoke-debian-{mode}-20260101T000000Z.log"
        console.write_text(f"SeaBIOS\nLoading /live/vmlinuz\nconsole says {HOSTILE}\nISOBUILD-UNAME 6.1.0-isobuild\n"
                           f"ISOBUILD-MODE {mode}\nISOBUILD-DONE\n")
        state.save(smoke.SmokeCheck(iso_stage, mode).record_path, {
            "stage": "smoke", "mode": mode, "key": iso_stage.key, "finished": "2026-01-01T00:03:00Z", "status": verdict,
            "reasons": reasons, "seconds": 41.5, "log": str(console), "accel": "tcg",
            "markers": {"UNAME": "6.1.0-isobuild", "SYSTEM": "running", "FAILED": "none"}})
    iso = project.iso_dir / "debian"
    iso.mkdir(parents=True, exist_ok=True)
    (iso / "isobuild-debian.manifest.json").write_text(json.dumps({
        "distro": "debian", "iso": "isobuild-debian.iso", "sha256": "ab" * 32, "size": 89128960,
        "kernel_release": "6.1.0-isobuild", "label": "ISOBUILD_DEBIAN", "cmdline": "boot=live",
        "iso_key": "1" * 64, "rootfs_key": "2" * 64, "kernel_key": "3" * 64,
        "patches": [{"name": "0001-xsc.patch", "sha256": "cd" * 32, "strip": 1}],
        "packages": [{"package": "libc6", "version": "2.36-9+deb12u9+isobuild1", "arch": "amd64"},
                     {"package": "systemd-sysv", "version": "252.33-1~deb12u1", "arch": "amd64"},
                     {"package": HOSTILE, "version": "1", "arch": "all"}]}))


@pytest.fixture
def reported(fake_project: FakeProject) -> FakeProject:
    settings = fake_project.settings()
    settings["kernel"]["patches"] = "patches/kernel"
    fake_project.write_settings(settings)
    make_state(fake_project)
    return fake_project


def test_report_holds_every_status_row_verdict_log_manifest_and_patch(reported: FakeProject,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert reported.run("report") == 0
    out = reported.root / "iso" / "report.html"  # the default: beside the ISOs
    assert f"report: {out}" in capsys.readouterr().out
    html = out.read_text()
    dom = parse(html)
    rows = status.rows(load_project(reported.root / "isobuild.yaml"))
    assert dom.rows == expected_rows(rows), "the stage table is status's rows, in order"
    states = {(r["stage"], r["name"]): r["state"] for r in dom.rows}
    assert states[("kernel", "ci")] == "failed" and states[("kernel-boot", "ci")] == "pass"
    assert states[("smoke", "debian/bios-cd")] == "pass" and states[("smoke", "debian/uefi-usb")] == "fail"
    assert states[("smoke", "debian/uefi-cd")] == "missing"
    assert [c["name"] for c in dom.checks] == ["ci", "debian/bios-cd", "debian/bios-usb", "debian/uefi-cd",
                                               "debian/uefi-usb"]
    # console logs embedded (collapsible), escaped: the hostile text is text, never markup
    assert dom.details >= 4 and "ISOBUILD-MODE bios-cd" in dom.text and "ISOBUILD-MODE uefi-usb" in dom.text
    assert "UNAME: got 6.1.0-other, want 6.1.0-isobuild" in dom.text
    assert HOSTILE in dom.text and "script" not in dom.tags and "b" not in dom.tags
    assert "&lt;script&gt;" in html
    # the failed kernel build: its log tail, not all of it
    assert "make exited 2" in dom.text and "error: expected ';'" in dom.text
    assert "CC drivers/x299.o" in dom.text and "CC drivers/x10.o\n" not in dom.text
    # the manifest and both series
    assert "2.36-9+deb12u9+isobuild1" in dom.text and "3 packages" in dom.text and "85.0 MiB" in dom.text
    kernel_patch = reported.patches / "0001-xsc.patch"
    import hashlib

    assert "0001-xsc.patch" in dom.text and hashlib.sha256(kernel_patch.read_bytes()).hexdigest() in dom.text
    # self-contained: nothing is loaded from anywhere
    assert not [(k, v) for k, v in dom.attributes if k in ("src", "href")]
    assert "<link" not in html and "@import" not in html


def test_report_out_and_a_gone_log(reported: FakeProject, tmp_path: Path) -> None:
    for log in (reported.root / "logs").glob("smoke-*.log"):
        log.unlink()  # a CI job that did not keep the logs
    out = tmp_path / "elsewhere" / "r.html"
    assert reported.run("report", "--out", str(out)) == 0
    assert "is not on this machine any more" in parse(out.read_text()).text


def test_report_of_a_project_with_nothing_built(fake_project: FakeProject) -> None:
    assert fake_project.run("report") == 0
    dom = parse((fake_project.root / "iso" / "report.html").read_text())
    assert {r["state"] for r in dom.rows} <= {"missing", "blocked"}
    assert "No ISO has been built" in dom.text
    assert "kernel: patches/kernel/series" in dom.text
    assert "glibc:" not in dom.text, "glibc.enabled is false: its series is not part of the build"


def test_a_long_console_log_keeps_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(200_000)))
    got = report.read_log(str(log), limit=4096)
    assert got.truncated and got.text is not None and got.text.endswith("line 199999\n")
    assert re.match(r"line \d+\n", got.text), "starts on a whole line"
    assert report.read_log(str(tmp_path / "gone.log")).text is None



def test_the_glibc_series_is_listed_when_glibc_is_part_of_the_build(fake_project: FakeProject) -> None:
    make_state(fake_project)  # writes patches/glibc/series
    settings = fake_project.settings()
    settings["glibc"] = {"enabled": True}
    fake_project.write_settings(settings)
    packaging = fake_project.root / "patches" / "glibc-debian"
    packaging.mkdir()
    (packaging / "0001-profile.patch").write_text("--- a/debian/rules\n+++ b/debian/rules\n")
    (packaging / "series").write_text("0001-profile.patch\n")
    series = report._series(load_project(fake_project.root / "isobuild.yaml"))
    assert [(s.component, [p.name for p in s.patches], s.error) for s in series] == [
        ("kernel", ["0001-xsc.patch"], ""), ("glibc", ["0001-banner.patch"], ""),
        ("glibc packaging", ["0001-profile.patch"], "")]
    (fake_project.root / "patches" / "glibc" / "series").write_text("0001-banner.patch\n0002-gone.patch\n")
    broken = report._series(load_project(fake_project.root / "isobuild.yaml"))[1]
    assert "0002-gone.patch" in broken.error, "a broken series is shown as such, not a crash"
