"""The smoke stage: boot an ISO in each firmware x media mode and prove the
running system is the patched one.

The image carries a boot-check unit that runs only when QEMU passes
``-fw_cfg name=opt/isobuild/smoke`` (inert on real machines).  It reports the
kernel release, the patched-kernel marker, the systemd state and the failed
units; the host also watches the console for panics, Oopses and BUGs.
Results: this project's record per mode, ``logs/smoke-<distro>.json`` and
``logs/smoke-<distro>.xml`` (JUnit).  Verdicts: pass / fail / error
(infrastructure), with distinct exit codes.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from builder.infra import atomic, log, schema
from builder.infra.arch import ARCHES, Arch
from builder.infra.errors import UserError
from builder.stages import guesttests, iso
from builder.stages.base import Check, Row
from builder.tools import bootmedia, console

FW_CFG = {"opt/isobuild/smoke": "1"}


def modes_for(arch: Arch) -> tuple[str, ...]:
    """The boot modes (firmware-media) an image of ``arch`` boots in (builder.infra.arch)."""
    return bootmedia.modes(arch)


# every arch's, x86_64's first (the order --modes lists them in)
MODES = tuple(dict.fromkeys(m for a in ARCHES.values() for m in modes_for(a)))


def parse_modes(text: str, arch: Arch = ARCHES["x86_64"]) -> list[str]:
    """--modes for an image of ``arch``: a mode no arch has is unknown; one another arch has is refused
    naming the modes of this one (builder.tools.bootmedia.check_modes)."""
    names = schema.choices(text, MODES, "boot mode(s)")
    bootmedia.check_modes(arch, names)
    return names


def timeout_for(arch: Arch, seconds: float) -> float:
    """smoke.timeout is measured on x86_64; an emulated arch's boots take tcg_slowdown times longer."""
    return seconds * arch.tcg_slowdown


def expect(marker_pattern: str, release: str, glibc: dict[str, Any] | None = None) -> console.Expect:
    """What a good boot reports; with ``glibc`` (the ISO record's) also our libc6 version and banner marker."""
    markers = {"UNAME": re.escape(release), "MARKER": marker_pattern, "SYSTEM": "running", "FAILED": "none"}
    if glibc:
        markers.update(GLIBC=re.escape(str(glibc["version"])), LIBC=f".*{re.escape(str(glibc['marker']))}.*")
    return console.Expect(markers)


class SmokeCheck(Check):
    """One boot mode of one distro's ISO: this project's record of its verdict and its row."""

    kind = "smoke"
    changed = "ISO changed since this boot check"
    of: iso.IsoStage

    @property
    def legacy_record(self) -> str | None:
        return f"distros/{self.of.instance}/state/smoke-{self.mode}.json" if self.of.arch == "x86_64" else None

    def row(self) -> Row:
        """The check's row; its detail leads with the guest tests' tally when the boot ran them."""
        row = super().row()
        tests = (self.last() or {}).get("tests") or []
        if tests and row.state in ("pass", "fail"):
            passed = sum(t.get("status") == "pass" for t in tests)
            failing = [f"{t.get('name')} {t.get('status')}" for t in tests if t.get("status") != "pass"]
            row.detail = f"guest tests {passed}/{len(tests)} pass" + (f" ({', '.join(failing)})" if failing else "") + \
                "; " + row.detail
        return row


def checks(stage: iso.IsoStage) -> list[SmokeCheck]:
    return [SmokeCheck(stage, mode) for mode in modes_for(ARCHES[stage.arch])]


def boot_plan(boots: int, host_cpus: int, parallel: int = 0, cpus: int = 0) -> tuple[int, int]:
    """(boots at once, virtual CPUs per guest); ``parallel``/``cpus`` (the smoke settings) win when set.

    Under TCG every virtual CPU is a host thread (QEMU's multi-threaded TCG), so the guests together
    should not ask for more threads than the host has CPUs: as many boots at once as there are host
    CPUs, one virtual CPU each, when there are more boots than CPUs; else the CPUs shared out.
    Measured with bench/boots on the 2-core reference host, the default-profile Debian ISO, four
    modes: 2 at once x 1 vCPU 34.3 s to the first verdict, 82.2 s to the last, 158.6 QEMU CPU-s;
    4 x 1: 95.9 / 105.5 s, 203.7 CPU-s; 2 x 2: 32.9 / 97.1 s, 182.3 CPU-s (and one at a time, 4 x
    24-37 s in sequence, 118 s).  Oversubscribing the cores costs more than it overlaps.
    """
    at_once = parallel or max(1, min(boots, host_cpus))
    return at_once, cpus or max(1, host_cpus // at_once)


def run(stage: iso.IsoStage, modes: list[str], log_for: Callable[[str], Path],
        on_verdict: Callable[[console.Verdict], None] | None = None,
        tests: guesttests.Drive | None = None) -> list[console.Verdict]:
    """Boot the ISO in each mode -- as many at once as the host's CPUs allow (``boot_plan``) -- and
    return the verdicts in ``modes`` order.  ``on_verdict`` hears each as soon as it exists: the first
    mode's result, or a failure, is not held back until the slowest boot is done.  ``tests``: the
    guest tests' drive, attached to every boot; each of its tests must report and pass."""
    record = stage.built()
    if record is None:
        name = stage.instance
        changed = stage.changes()
        why = f"stale: {'; '.join(changed)}" if changed else "missing or stale"
        flag = "" if ARCHES[stage.arch].native() else f" --arch {stage.arch}"
        raise UserError(f"the {name} ISO is {why} ({stage.out})", hint=f"run: isobuild {name}{flag}")
    project = stage.project
    smoke = project.settings.smoke
    want = expect(project.settings.kernel.boot.marker_pattern, str(record["kernel_release"]), record.get("glibc"))
    arch = ARCHES[stage.arch]
    limit = timeout_for(arch, smoke.timeout)
    if tests is not None:
        want.tests = list(tests.names)
        limit += len(tests.names) * (smoke.test_timeout + 5)  # each test's own limit, and its kill grace
    workers, cpus = boot_plan(len(modes), os.cpu_count() or 1, smoke.parallel, smoke.cpus)
    log.get().info("smoke.plan", modes=modes, at_once=workers, guest_cpus=cpus)

    def one(mode: str) -> console.Verdict:
        firmware, media = mode.split("-")
        verdict = bootmedia.boot_iso(arch, stage.out, firmware, media, want, log_for(mode),  # type: ignore[arg-type]
                                     timeout=limit, memory=smoke.memory, fw_cfg=FW_CFG, cpus=cpus,
                                     tests=tests.image if tests is not None else None)
        verdict.extra["mode"] = mode
        SmokeCheck(stage, mode).save(verdict.as_dict())
        return verdict

    done: dict[str, console.Verdict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, mode): mode for mode in modes}
        try:
            for future in as_completed(futures):
                done[futures[future]] = verdict = future.result()
                log.get().info("smoke.verdict", distro=stage.instance, mode=verdict.extra.get("mode"),
                               status=verdict.status, seconds=round(verdict.seconds, 1))
                if on_verdict is not None:
                    on_verdict(verdict)
        finally:  # an error (or Ctrl-C) starts no further boot; the running ones end with their QEMU
            for future in futures:
                future.cancel()
    verdicts = [done[mode] for mode in modes]
    write_results(project.logs_dir, results_name(stage.instance, stage.arch), verdicts)
    return verdicts


def results_name(distro: str, arch: str) -> str:
    """The name of an ISO's smoke results (logs/smoke-<name>.json, .xml, the JUnit suite): the distro,
    with the arch after it for every arch but the first (x86_64's names are as they were before)."""
    return distro if arch == "x86_64" else f"{distro}-{arch}"


def write_results(logs_dir: Path, distro: str, verdicts: list[console.Verdict]) -> None:
    atomic.write_json(logs_dir / f"smoke-{distro}.json", [v.as_dict() for v in verdicts])
    atomic.write_text(logs_dir / f"smoke-{distro}.xml", junit(distro, verdicts))


def junit(distro: str, verdicts: list[console.Verdict]) -> str:
    suite = ET.Element("testsuite", name=f"isobuild.smoke.{distro}", tests=str(len(verdicts)),
                       failures=str(sum(v.status == "fail" for v in verdicts)),
                       errors=str(sum(v.status == "error" for v in verdicts)),
                       time=f"{sum(v.seconds for v in verdicts):.1f}")
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"smoke.{distro}", name=str(v.extra.get("mode")),
                             time=f"{v.seconds:.1f}")
        if v.status != "pass":
            tag = "failure" if v.status == "fail" else "error"
            node = ET.SubElement(case, tag, message="; ".join(v.reasons)[:500])
            node.text = "\n".join(v.tail)
        out = ET.SubElement(case, "system-out")
        out.text = json.dumps({"markers": v.markers, "findings": v.findings, "log": v.log}, sort_keys=True)
        for t in v.tests:  # one testcase per guest test and mode
            test = ET.SubElement(suite, "testcase", classname=f"guest.{distro}.{v.extra.get('mode')}",
                                 name=str(t["name"]), time=str(t.get("seconds", 0)))
            if t.get("status") != "pass":
                node = ET.SubElement(test, "failure", message=f"{t.get('status')} (exit {t.get('exit')})")
                node.text = "\n".join(t.get("output", []))
            ET.SubElement(test, "system-out").text = "\n".join(t.get("output", []))
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(len(suite.findall("testcase/failure"))))
    return ET.tostring(suite, encoding="unicode") + "\n"


def line(v: console.Verdict) -> str:
    """``smoke bios-cd: pass in 31 s``, with the reasons of a failure."""
    return f"smoke {v.extra.get('mode')}: {v.status} in {v.seconds:.0f} s" + (f" -- {'; '.join(v.reasons)}"
                                                                            if v.reasons else "")


def summary(verdicts: list[console.Verdict]) -> str:
    return "\n".join(line(v) for v in verdicts)


def raise_for(verdicts: list[console.Verdict]) -> None:
    console.raise_for(verdicts, "the ISO")
