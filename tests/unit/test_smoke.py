"""The boot checks' scheduling: how many boots at once with how many vCPUs each, verdicts heard as
they come (a failure is not held back behind slower boots), returned in the modes' order."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builder.infra.config import Project, Settings
from builder.stages import smoke
from builder.tools import bootmedia
from builder.tools.console import Verdict


@pytest.mark.parametrize(("boots", "host", "parallel", "cpus", "want"), [
    (4, 2, 0, 0, (2, 1)),   # more boots than CPUs: one boot per CPU, one vCPU each
    (4, 8, 0, 0, (4, 2)),   # CPUs to spare: all at once, the CPUs shared out
    (1, 2, 0, 0, (1, 2)),   # one boot: it gets the host
    (4, 1, 0, 0, (1, 1)),
    (4, 2, 4, 0, (4, 1)),   # smoke.parallel set: honoured
    (4, 2, 0, 2, (2, 2)),   # smoke.cpus set: honoured
])
def test_boot_plan(boots: int, host: int, parallel: int, cpus: int, want: tuple[int, int]) -> None:
    assert smoke.boot_plan(boots, host, parallel, cpus) == want


def _stage(tmp_path: Path) -> Any:
    project = Project(tmp_path, tmp_path / "isobuild.yaml", Settings(work_dir=str(tmp_path / "work"),
                                                                      logs_dir=str(tmp_path / "logs")))
    (tmp_path / "logs").mkdir()
    return SimpleNamespace(project=project, instance="debian", arch="x86_64", key="k" * 64, out=tmp_path / "x.iso",
                           label="iso-debian-x86_64", built=lambda: {"kernel_release": "6.1.0-isobuild"})


def test_verdicts_are_heard_as_they_come_and_returned_in_mode_order(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """bios-cd fails fast while the others still boot: it is heard first, before the slow ones end."""
    took = {"bios-cd": 0.05, "bios-usb": 0.6, "uefi-cd": 0.3, "uefi-usb": 0.4}
    running: list[int] = []
    active = 0
    lock = threading.Lock()

    def boot_iso(arch: Any, iso: Path, firmware: str, media: str, expect: Any, log_path: Path,
                 **kw: Any) -> Verdict:
        nonlocal active
        with lock:
            active += 1
            running.append(active)
        time.sleep(took[f"{firmware}-{media}"])
        with lock:
            active -= 1
        status = "fail" if firmware == "bios" and media == "cd" else "pass"
        return Verdict(status, ["marker UNAME not reported"] if status == "fail" else [], {}, [], [],
                       extra={"cpus": kw["cpus"]})

    monkeypatch.setattr(bootmedia, "boot_iso", boot_iso)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    heard: list[tuple[str, str, float]] = []
    start = time.monotonic()
    verdicts = smoke.run(_stage(tmp_path), list(took), lambda m: tmp_path / f"{m}.log",
                         lambda v: heard.append((str(v.extra["mode"]), v.status, time.monotonic() - start)))
    assert [v.extra["mode"] for v in verdicts] == list(took)
    assert heard[0][:2] == ("bios-cd", "fail") and heard[0][2] < 0.3, "the failure is not held back"
    assert [h[0] for h in heard] == ["bios-cd", "uefi-cd", "bios-usb", "uefi-usb"]
    assert max(running) == 2, "two boots at once on two CPUs"
    assert {v.extra["cpus"] for v in verdicts} == {1}
    assert (tmp_path / "logs/smoke-debian.json").is_file() and (tmp_path / "logs/smoke-debian.xml").is_file()


def test_an_error_starts_no_further_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    def boot_iso(arch: Any, iso: Path, firmware: str, media: str, *a: Any, **kw: Any) -> Verdict:
        started.append(f"{firmware}-{media}")
        raise OSError("no space left on device")

    monkeypatch.setattr(bootmedia, "boot_iso", boot_iso)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with pytest.raises(OSError):
        smoke.run(_stage(tmp_path), list(smoke.MODES), lambda m: tmp_path / f"{m}.log")
    assert started == ["bios-cd"]
