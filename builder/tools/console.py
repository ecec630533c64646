"""Reading a guest's serial console: markers in, verdict out.

The guest prints ``ISOBUILD-<NAME> <value>`` lines; the host also watches
for the kernel error patterns LAVA uses: ``Kernel panic - not syncing`` ends
the boot as a failure; ``Oops``/``BUG:`` fail it; ``WARNING:``/``cut here``
are reported.  Distro-neutral: the ISO smoke stage reuses it.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

from builder.infra.errors import CheckFailed, InfraError

PANIC = "Kernel panic - not syncing"
_MARKER = re.compile(r"ISOBUILD-([A-Z-]+)(?: (.*))?$")
_FATAL_FINDINGS = {"oops": re.compile(r"\bOops\b"), "bug": re.compile(r"\bBUG: ")}
_REPORTED_FINDINGS = {"warning": re.compile(r"\bWARNING: "), "cut-here": re.compile(r"-+\[ cut here \]-+")}


@dataclass
class Verdict:
    status: str  # pass | fail | error
    reasons: list[str]
    markers: dict[str, str]
    findings: list[str]
    tail: list[str]
    seconds: float = 0.0
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)  # guest tests: name, status, exit, seconds, output

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": self.reasons, "markers": self.markers,
                "findings": self.findings, "console_tail": self.tail, "seconds": round(self.seconds, 1),
                "log": self.log, "tests": self.tests, **self.extra}


@dataclass
class Expect:
    """What the run must show: marker name -> regex its value must match fully."""

    markers: dict[str, str]
    done: str = "DONE"
    tests: list[str] = field(default_factory=list)  # guest tests that must report (and pass)


class Watch:
    def __init__(self, expect: Expect):
        self.expect = expect
        self.markers: dict[str, str] = {}
        self.findings: list[str] = []
        self.panic: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=25)
        self.done = False
        self.tests: dict[str, dict[str, Any]] = {}

    def feed(self, line: str) -> bool:
        """Take one console line; True once the verdict is known (stop the guest)."""
        line = line.replace("\r", "")
        self.tail.append(line)
        if self.panic:
            self.panic.append(line)
            return len(self.panic) >= 8
        if PANIC in line:
            self.panic.append(line)
            return False
        for name, rx in {**_FATAL_FINDINGS, **_REPORTED_FINDINGS}.items():
            if rx.search(line):
                self.findings.append(f"{name}: {line.strip()}")
        m = _MARKER.search(line)
        if m:
            name, value = m.group(1), (m.group(2) or "").strip()
            if name == self.expect.done:
                self.done = True
                return True
            if name in ("TEST", "TESTOUT", "TESTSTART"):
                self._test_line(name, value)
            else:
                self.markers[name] = value
        return False

    def _test_line(self, name: str, value: str) -> None:
        """``TEST name status exit seconds`` and ``TESTOUT name line`` (the guest's runner, rootfs.GUEST_TESTS)."""
        if name == "TESTSTART":  # running until its TEST line: a crash or a hang names it
            self.tests.setdefault(value, {"name": value, "output": []}).update(status="running", exit=None,
                                                                               seconds=0)
            return
        if name == "TESTOUT":
            test, _, text = value.partition(" ")
            self.tests.setdefault(test, {"name": test, "output": []}).setdefault("output", []).append(text)
            return
        parts = value.split(" ", 4)
        if len(parts) < 4 or not parts[2].lstrip("-").isdigit() or not parts[3].isdigit():
            return
        entry = self.tests.setdefault(parts[0], {"name": parts[0], "output": []})
        entry.update(status=parts[1], exit=int(parts[2]), seconds=int(parts[3]))
        if len(parts) == 5:
            entry["output"].append(parts[4])

    def test_results(self) -> list[dict[str, Any]]:
        """Every test the guest reported, the expected ones first (a missing one as 'not-run'); one
        that started and never reported 'crashed' (the kernel panicked while it ran) or 'hung'."""
        out = [self.tests.get(n, {"name": n, "status": "not-run", "exit": None, "seconds": 0, "output": []})
               for n in self.expect.tests]
        out += [t for n, t in self.tests.items() if n not in self.expect.tests]
        return [dict(t, status="crashed" if self.panic else "hung") if t.get("status") == "running" else t
                for t in out]

    def verdict(self, timed_out: bool, exited: int | None) -> Verdict:
        reasons: list[str] = []
        if self.panic:
            reasons.append("kernel panic: " + self.panic[0].strip())
        reasons += [f"kernel {f}" for f in self.findings if f.split(":")[0] in _FATAL_FINDINGS]
        for name, pattern in self.expect.markers.items():
            got = self.markers.get(name)
            if got is None:
                missing = self.markers.get(f"{name}-MISSING")
                reasons.append(f"marker {name} not reported" + (f" ({missing} absent in the guest)" if missing else ""))
            elif not re.fullmatch(pattern, got):
                reasons.append(f"marker {name}: expected {pattern!r}, got {got!r}")
        for test in self.test_results():
            if test.get("status") != "pass":
                last = (test.get("output") or [""])[-1]
                how = f" (exit {test['exit']}, {test['seconds']} s)" if test.get("exit") is not None else ""
                reasons.append(f"guest test {test['name']}: {test.get('status')}{how}" + (f": {last}" if last else ""))
        if not self.done and not self.panic:
            if timed_out:  # the cause, so the headline: what is missing follows from it
                reasons.insert(0, "timed out before the guest finished its checks")
            else:
                reasons.append(f"guest stopped (QEMU exit {exited}) before finishing its checks")
        return Verdict("fail" if reasons else "pass", reasons, dict(self.markers), list(self.findings),
                       list(self.tail), tests=self.test_results())


def raise_for(verdicts: list[Verdict], kept: str) -> None:
    """CheckFailed when a guest said no (exit 4), InfraError when QEMU could not run it (exit 3),
    naming the modes (``extra['mode']``) when there are several, with each one's console tail;
    ``kept`` says what was kept (the kernel artifact, the ISO)."""
    failed = [v for v in verdicts if v.status == "fail"]
    broken = [v for v in verdicts if v.status == "error"]
    if not failed and not broken:
        return
    named = any(v.extra.get("mode") for v in verdicts)
    tail = 8 if named else 15
    details: list[str] = []
    for v in failed + broken:
        mode = f"{v.extra.get('mode')}: " if named else ""
        details += [f"{mode}{r}" for r in v.reasons]
        details += ([] if named else ["console tail:"]) + [f"  {line}" for line in v.tail[-tail:]]
        details.append(f"  console log: {v.log}" if named else f"full console log: {v.log}")

    def where(group: list[Verdict]) -> str:
        return f" in {', '.join(str(v.extra.get('mode')) for v in group)}" if named else ""

    if failed:
        raise CheckFailed(f"boot check failed{where(failed)}: {failed[0].reasons[0]}", details=details,
                          hint=f"{kept} is kept; see the console log{'s' if named else ''}")
    why = "" if named else ": " + "; ".join(broken[0].reasons)
    raise InfraError(f"boot check could not run{where(broken)}{why}", details=details)
