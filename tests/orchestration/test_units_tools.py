"""units: the parts that run real tools (moved from tests/unit/test_units.py, which
runs no process)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.infra import runner
from builder.infra.arch import ARCHES
from builder.infra.errors import InfraError, UserError
from builder.tools import initramfs, qemu, quilt
from tests.unit.test_units import _guest_fast_strings, write


def test_real_quilt_push_and_rollback(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "f.c", "one\ntwo\nthree\n")
    good = "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"
    bad = "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n one\n-zwei\n+ZWEI\n three\n"
    srcdir = tmp_path / "p"
    write(srcdir / "0.patch", "--- /dev/null\n+++ b/new/dir/n.c\n@@ -0,0 +1 @@\n+n\n")
    write(srcdir / "1.patch", good)
    write(srcdir / "2.patch", bad)
    write(srcdir / "series", "0.patch\n1.patch\n2.patch\n")
    copy = tmp_path / "copy"
    quilt.stage_copy(quilt.read_series(srcdir), copy)
    with pytest.raises(UserError) as exc:
        quilt.push(tree, copy, tmp_path / "log")
    assert exc.value.message == "patch 2.patch does not apply at fuzz 0: f.c hunk #1 (at line 1): hunk does not apply"
    assert (tree / "f.c").read_text() == "one\ntwo\nthree\n", "rolled back to pristine"
    assert not (tree / ".pc").exists()
    assert sorted(p.name for p in tree.iterdir()) == ["f.c"], "directories patch 0 created are gone"
    write(srcdir / "series", "1.patch\n")
    quilt.stage_copy(quilt.read_series(srcdir), copy)
    quilt.push(tree, copy, tmp_path / "log")
    assert (tree / "f.c").read_text() == "one\nTWO\nthree\n"


def test_quilt_ignores_the_users_quiltrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    write(home / ".quiltrc", "QUILT_PUSH_ARGS='--fuzz=3'\nQUILT_PATCHES=elsewhere\n")
    monkeypatch.setenv("HOME", str(home))
    tree = tmp_path / "tree"
    write(tree / "f.c", "one\ntwo\nthree\n")
    write(tmp_path / "p/1.patch", "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n uno\n-two\n+TWO\n three\n")
    write(tmp_path / "p/series", "1.patch\n")
    quilt.stage_copy(quilt.read_series(tmp_path / "p"), tmp_path / "copy")
    with pytest.raises(UserError, match="does not apply at fuzz 0"):
        quilt.push(tree, tmp_path / "copy", tmp_path / "log")


def test_quilt_ignores_the_users_quilt_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # quilt reads QUILT_* from the environment even with --quiltrc -: a series
    # file elsewhere, or patch(1) options, must not change what we apply
    monkeypatch.setenv("QUILT_SERIES", "other-series")
    monkeypatch.setenv("QUILT_PATCH_OPTS", "--reverse")
    monkeypatch.setenv("QUILT_PC", ".elsewhere")
    tree = tmp_path / "tree"
    write(tree / "f.c", "one\ntwo\nthree\n")
    write(tmp_path / "p/1.patch", "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
    write(tmp_path / "p/series", "1.patch\n")
    quilt.stage_copy(quilt.read_series(tmp_path / "p"), tmp_path / "copy")
    quilt.push(tree, tmp_path / "copy", tmp_path / "log")
    assert (tree / "f.c").read_text() == "one\nTWO\nthree\n"
    assert (tree / ".pc").is_dir() and not (tree / ".elsewhere").exists()
    env = quilt.quilt_env(tmp_path / "copy")
    assert env["QUILT_SERIES"] == env["QUILT_PATCH_OPTS"] == "" and env["QUILT_PC"] == ".pc"


def test_cpio_is_readable_by_real_cpio_and_deterministic(tmp_path: Path) -> None:
    import stat

    entries = [initramfs.Entry("bin", stat.S_IFDIR | 0o755), initramfs.Entry("bin/x", stat.S_IFREG | 0o755, b"hi\n"),
               initramfs.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               initramfs.Entry("bin/sh", stat.S_IFLNK | 0o777, b"x")]
    data = initramfs.cpio(entries)
    assert data == initramfs.cpio(list(reversed(entries)))
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    assert "bin/x" in listing and "bin/sh -> x" in listing
    assert any(line.startswith("crw-------") and "5,   1" in line and "dev/console" in line
               for line in listing.splitlines())


def test_busybox_initramfs_refuses_a_dynamic_busybox(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="dynamically linked"):
        initramfs.busybox_initramfs(tmp_path / "i.cpio", "/sys/x", busybox=Path("/bin/ls"))
    with pytest.raises(InfraError, match="not found"):
        initramfs.busybox_initramfs(tmp_path / "i.cpio", "/sys/x", busybox=tmp_path / "none")
    assert initramfs.is_static_elf(Path("/bin/busybox").read_bytes())
    initramfs.busybox_initramfs(tmp_path / "i.cpio", "/sys/kernel/xsc/version")
    listing = subprocess.run(["cpio", "-it"], input=(tmp_path / "i.cpio").read_bytes(), capture_output=True,
                             check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "dev/console"} <= set(listing)


def test_init_script_runs_under_busybox(tmp_path: Path) -> None:
    marker = write(tmp_path / "marker", "1.2.3\n")
    script = initramfs.init_script(str(marker)).replace("/bin/busybox poweroff -f", "true")
    script = "\n".join(line for line in script.splitlines() if " mount " not in line)
    out = subprocess.run(["/bin/busybox", "sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert "ISOBUILD-MARKER 1.2.3" in out and "ISOBUILD-DONE" in out and "ISOBUILD-UNAME " in out


def test_probe_boots_under_tcg() -> None:
    # the probe mechanism itself, on the accelerator that always works
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(qemu.probe_image())
        f.flush()
        result = runner.run(qemu.probe_argv(ARCHES["x86_64"], "tcg", Path(f.name)), timeout=30, check=False)
    assert result.returncode == 99


def test_tcg_guest_sees_no_fast_strings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Real QEMU, real CPUID: our TCG model hides ERMS and FSRM (see qemu.TCG_CPU);
    # plain "max" advertises ERMS on this QEMU, which is what made the boots slow.
    assert _guest_fast_strings(monkeypatch, tmp_path, None) == (False, False)
    assert _guest_fast_strings(monkeypatch, tmp_path, "max")[0] is True


def test_runner_logs_command_and_output(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    result = runner.run(["sh", "-c", "echo out; echo err >&2"], log_path=log, capture=True, env={"A": "b c"})
    assert result.output == "out\nerr"
    text = log.read_text()
    assert text.startswith("$ env A='b c' sh -c 'echo out; echo err >&2'\nout\nerr\n[exit 0 after")


def test_runner_failure_carries_error_lines_log_and_reproducer(tmp_path: Path) -> None:
    script = "; ".join(["echo noise"] * 50 + ["echo 'x.c:3:1: error: boom'", "exit 2"])
    with pytest.raises(runner.CommandFailed) as exc:
        runner.run(["sh", "-c", script], log_path=tmp_path / "x.log", cwd=tmp_path)
    e = exc.value
    assert e.returncode == 2 and e.error_lines == ["x.c:3:1: error: boom"]
    assert e.details == ["x.c:3:1: error: boom", f"full log: {tmp_path / 'x.log'}"]
    assert e.hint == f"re-run by hand: cd {tmp_path} && sh -c " + __import__("shlex").quote(script)


def test_runner_missing_tool_and_timeout_and_stop(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="no-such-tool: command not found"):
        runner.run(["no-such-tool"])
    # both commands would run 60 s; each is stopped (SIGTERM, which a namespace's first process
    # ignores, then SIGKILL) long before that
    with pytest.raises(runner.CommandFailed, match="timed out"):
        runner.run(["sleep", "60"], timeout=0.5)
    result = runner.run(["sh", "-c", "echo a; echo STOP; sleep 60"], on_line=lambda line: line == "STOP")
    assert result.stopped and result.returncode != 0 and result.seconds < 30 and result.output == "a\nSTOP"


def test_runner_disk_full_is_infra(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="disk full while running sh"):
        runner.run(["sh", "-c", "echo 'cp: No space left on device'; exit 1"], log_path=tmp_path / "l")


def test_doctor_passes_on_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    from builder import cli

    assert cli.main(["doctor"]) == 0, capsys.readouterr().out
    assert "all host tools are present" in capsys.readouterr().out
