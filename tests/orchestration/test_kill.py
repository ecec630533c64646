"""SIGKILL at seeded random points of the kernel and glibc stages (on their fakes): after each kill
nothing of the run is left running, the next run succeeds, no temp tree survives it, and the last
good artifact was never lost.  A kill gives isobuild no chance to clean up: what makes this hold is
that its children die with it (PR_SET_PDEATHSIG) and that the next run sweeps a dead run's temps."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.infra import atomic
from tests.conftest import FakeProject, records
from tests.orchestration.test_glibc_fake import GlibcProject, new_project

SEED = 20261202
KERNEL_POINTS = 12
GLIBC_POINTS = 10


def _isobuild(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "builder", "-c", str(config), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                            cwd=config.parent, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _survivors(marker: str, grace: float = 1.0) -> list[str]:
    """Processes whose command line names ``marker`` (the test's own directory), after ``grace`` s."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if marker in cmd or cwd.startswith(marker):
                found.append(f"{pid}: {cmd[:160]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def _temps(*tops: Path) -> list[Path]:
    """Anything that looks like a temp: isobuild's pattern, or any hidden name with tmp/staged/old in it."""
    out = []
    for top in tops:
        if top.exists():
            out += [p for p in top.rglob("*") if atomic.TEMP.fullmatch(p.name)
                    or (p.name.startswith(".") and any(w in p.name for w in ("tmp", "staged", ".old", "root-")))]
    return out


def _duration(config: Path, args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = _isobuild(config, *args, env=env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - start


def _kill_points(config: Path, args: list[str], env: dict[str, str], points: int, seed: int, work: Path,
                 outputs: list[Path], last_good: Path) -> list[str]:
    """Kill ``isobuild args`` at ``points`` seeded moments of a full run; return what was seen, per point.

    The killed runs get ``env`` (FAKE_SLEEP: each compile step lasts seconds, so a child that outlived
    isobuild would still be there to see); the reruns after them do not, and are quick."""
    full = _duration(config, args, env)  # also leaves a last good artifact
    good = os.readlink(last_good)
    rng = random.Random(seed)
    seen = []
    for n in range(points):
        at = rng.uniform(0.05, 0.95) * full
        proc = _isobuild(config, *args, env=env)
        time.sleep(at)
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        proc.wait()
        left = _survivors(str(work.parent))
        assert not left, f"kill point {n} ({at:.2f} s of {full:.1f} s): still running:\n" + "\n".join(left)
        assert os.readlink(last_good) == good or (last_good.parent / os.readlink(last_good)).exists(), \
            "the current artifact is always a whole one"
        again = _isobuild(config, *args[:1])  # a plain rerun (no --force): must succeed
        _, err = again.communicate(timeout=600)
        assert again.returncode == 0, f"kill point {n}: the next run failed:\n{err.decode()}"
        stale = _temps(work, *outputs)
        assert not stale, f"kill point {n}: temps left after the next run: {stale}"
        seen.append(f"{at:.2f}s")
    return seen


def test_sigkill_during_the_kernel_stage(fake_project: FakeProject) -> None:
    config = fake_project.root / "isobuild.yaml"
    env = {"FAKE_SLEEP": "4"}  # every fake object takes seconds: kills land mid-make, mid-package...
    link = records(fake_project.root, fake_project.work) / "current" / "kernel-ci-x86_64"
    seen = _kill_points(config, ["kernel", "--force"], env, KERNEL_POINTS, SEED, fake_project.work,
                        [fake_project.root / "iso"], link)
    assert len(seen) == KERNEL_POINTS


@pytest.fixture
def glibc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GlibcProject:
    project = new_project(tmp_path)
    monkeypatch.chdir(project.root)
    return project


def test_sigkill_during_the_glibc_stage(glibc: GlibcProject) -> None:
    config = glibc.root / "isobuild.yaml"
    seen = _kill_points(config, ["glibc", "--force"], {"FAKE_SLEEP": "4"}, GLIBC_POINTS, SEED + 1, glibc.work,
                        [glibc.root / "iso"], records(glibc.root, glibc.work) / "current" / "glibc-x86_64")
    assert len(seen) == GLIBC_POINTS
