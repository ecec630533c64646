"""Containment on real roots: an overlay cannot reach the host through a Debian root's own links,
the Debian ISO builds and boots as an ordinary user, and SIGKILL during the rootfs, ISO and smoke
stages leaves nothing running, no temp behind and never a partial ISO in iso/.

CI kills at 3 seeded points; ISOBUILD_FULL=1 at 12.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builder.infra import atomic
from builder.stages.base import project_id
from tests.real.conftest import REPO, WORK, copy_project, run

pytestmark = pytest.mark.real

USER = "isobuild-rootless"
KILL_POINTS = 12 if os.environ.get("ISOBUILD_FULL") else 3


def _host(path: str) -> tuple[str, int]:
    p = Path(path)
    return (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "absent", p.lstat().st_mtime_ns
            if p.exists() else 0)


def _edit(path: Path, **changes: object) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def test_an_overlay_cannot_reach_the_host_through_the_roots_links(project: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Debian's root has etc/localtime -> /usr/share/zoneinfo/Etc/UTC (absolute): an overlay file at
    etc/localtime once went through it and overwrote the host's zone file."""
    overlay = project / "overlay"
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc/localtime").write_text("overlay zone\n")
    (overlay / "etc/motd").write_text("hello from the overlay\n")
    _edit(project / "distros/debian.yaml", overlay="overlay")
    watched = ["/usr/share/zoneinfo/Etc/UTC", "/etc/localtime", "/etc/motd", "/etc/hostname", "/etc/hosts"]
    before = {p: _host(p) for p in watched}
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0, capsys.readouterr().err
    assert {p: _host(p) for p in watched} == before, "no host file changed"
    current = WORK / "projects" / project_id(project) / "current/rootfs-debian-x86_64"
    rootfs = current.resolve() / "filesystem.squashfs"
    got = subprocess.run(["unsquashfs", "-cat", str(rootfs), "etc/localtime"], capture_output=True, text=True,
                         check=True).stdout
    assert got == "overlay zone\n", "the overlay replaced the root's link inside the root"


def _user() -> pwd.struct_passwd:
    """An ordinary user with a subordinate-id range (made here when the tests run as root)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    entry = pwd.getpwnam(USER)
    ranges = Path("/etc/subuid").read_text() if Path("/etc/subuid").exists() else ""
    if f"{USER}:" not in ranges:
        subprocess.run(["usermod", "--add-subuids", "300000-365535", "--add-subgids", "300000-365535", USER],
                       check=True)
    return entry


@pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as an ordinary user: every test is rootless already")
def test_the_debian_iso_builds_and_boots_as_an_ordinary_user(tmp_path: Path) -> None:
    """mmdebstrap's unshare mode bootstraps, the root's commands run in a user namespace, QEMU boots
    it -- no root anywhere.  The kernel and glibc artifacts are the test cache's (same keys), copied
    to the user's own work dir: this test is about the root filesystem, the ISO and the boot."""
    user = _user()
    base = Path(f"/var/tmp/isobuild-rootless-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    try:
        root = copy_project(base / "project")
        work = base / "work"
        for part in ("kernel/artifacts", "glibc/artifacts", "cache/debian/bookworm"):
            src = WORK / part
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, work / part, symlinks=True)
            elif src.exists() or src.is_symlink():
                (work / part).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, work / part, follow_symlinks=False)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(base)], check=True)
        os.chmod(base, 0o755)
        site = next(Path(REPO / ".venv/lib").glob("python3*/site-packages"))
        env = {"HOME": user.pw_dir, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ISOBUILD_WORK_DIR": str(work),
               "PYTHONPATH": f"{site}:{REPO}", "LC_ALL": "C.UTF-8"}
        done = subprocess.run(["runuser", "-u", USER, "--", "/usr/bin/python3", "-m", "builder", "-c",
                               str(root / "isobuild.yaml"), "debian", "--profile", "ci", "--modes", "bios-cd"],
                              env=env, cwd=root, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "smoke bios-cd: pass" in done.stdout
        image = root / "iso/debian/isobuild-debian.iso"
        assert image.stat().st_uid == user.pw_uid, "the ISO is the user's"
        log = "\n".join(p.read_text(errors="replace") for p in (root / "logs").glob("rootfs-debian-*.log"))
        assert "mmdebstrap --mode=unshare" in log, "bootstrapped without root"
        assert "--map-root-user" in log, "the root's commands ran in a user namespace"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def _isobuild(root: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "builder", "-c", str(root / "isobuild.yaml"), *args],
                            cwd=root, env={**os.environ, "ISOBUILD_WORK_DIR": str(WORK)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _running(markers: list[str]) -> list[str]:
    time.sleep(1.0)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid() and any(m in cmd for m in markers) and "pytest" not in cmd:
            found.append(f"{pid}: {cmd[:200]}")
    return found


def test_sigkill_during_rootfs_iso_and_smoke_never_leaves_a_partial_iso(project: Path) -> None:
    iso_dir = project / "iso" / "debian"
    overlay = project / "overlay"
    overlay.mkdir()
    _edit(project / "distros/debian.yaml", overlay="overlay")
    args = ["debian", "--profile", "ci", "--modes", "bios-cd"]
    (overlay / "build").write_text("0\n")
    start = time.monotonic()
    first = _isobuild(project, *args)
    _, err = first.communicate(timeout=1800)
    assert first.returncode == 0, err.decode()[-3000:]
    full = time.monotonic() - start
    rng = random.Random(20261202)
    for n in range(KILL_POINTS):
        (overlay / "build").write_text(f"{n + 1}\n")  # a new rootfs key: the rootfs stage runs again
        at = rng.uniform(0.05, 0.95) * full
        proc = _isobuild(project, *args)
        time.sleep(at)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        left = _running([str(project), str(WORK / "distros")])
        assert not left, f"kill point {n} at {at:.0f} s of {full:.0f} s; still running:\n" + "\n".join(left)
        for image in iso_dir.glob("*.iso"):
            sums = image.with_name(image.name + ".sha256").read_text().split()[0]
            assert hashlib.sha256(image.read_bytes()).hexdigest() == sums, f"kill point {n}: a partial {image}"
        again = _isobuild(project, "debian", "--profile", "ci", "--no-smoke")
        _, err = again.communicate(timeout=1800)
        assert again.returncode == 0, f"kill point {n}: {err.decode()[-3000:]}"
        temps = [p for top in (WORK / "distros", WORK / "cache", project / "iso") for p in top.rglob("*")
                 if atomic.TEMP.fullmatch(p.name)]
        assert not temps, f"kill point {n}: temps left: {temps}"
