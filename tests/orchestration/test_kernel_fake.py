"""Orchestration of the kernel stage on the fake kernel tree (real quilt, real
tar, real dpkg-deb; fake make targets).  Each test takes well under a second
or two."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from builder.infra.errors import ExitCode
from tests.conftest import FAKELINUX, XSC_PATCH, Events, FakeProject, make_patch


def artifact_dirs(project: FakeProject) -> list[Path]:
    return sorted(p for p in (project.work / "kernel" / "artifacts").glob("*") if not p.name.startswith("."))


def metadata(project: FakeProject) -> Any:
    current = project.current("kernel-ci-x86_64")
    return json.loads((current / "metadata.json").read_text())


def test_build_produces_artifacts_and_metadata(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    meta = metadata(fake_project)
    current = fake_project.current("kernel-ci-x86_64")
    for name in ("bzImage", "System.map", "config", "metadata.json"):
        assert (current / name).is_file(), name
    # no packages: what they are made from (builder.stages.kpackage), the uapi headers among it
    assert not list(current.rglob("*.deb")) and not list(current.rglob("*.rpm"))
    assert (current / "uapi/include/linux/xsc.h").read_text() == "#define XSC_FAKE 1\n"
    assert (current / "modules" / "lib" / "modules" / "6.1.0-isobuild" / "kernel" / "fake.ko").is_file()
    assert meta["kernel_release"] == "6.1.0-isobuild"
    assert meta["patches"][0]["name"] == "0001-xsc.patch"
    assert meta["inputs"]["source"]["kind"] == "tarball"
    assert meta["config"]["effective"]["CONFIG_FAKE_FEATURE"] == "y"
    assert meta["config"]["requested"] == {"CONFIG_FAKE_BASE": "y", "CONFIG_FAKE_FEATURE": "y", "CONFIG_FAKE_XSC": "y"}
    assert set(meta["durations"]) == {"patch", "config", "compile", "collect"}
    assert meta["artifacts"]["bzImage"] == hashlib.sha256((current / "bzImage").read_bytes()).hexdigest()
    assert "make O=" in meta["reproducer"]["make"] and "LOCALVERSION=-isobuild" in meta["reproducer"]["make"]
    # the patch really was applied by quilt
    assert b"xsc_version = 1" in (current / "bzImage").read_bytes()
    assert meta["make_env"]["KBUILD_BUILD_USER"] == "isobuild"
    assert "built:" in capsys.readouterr().out


def test_kernel_json_prints_the_metadata(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernel"]["kernel_release"] == "6.1.0-isobuild" and out["boot"] is None
    assert fake_project.run("kernel", "--json") == 0
    assert json.loads(capsys.readouterr().out)["kernel"]["key"] == out["kernel"]["key"]


def test_boot_check_of_a_missing_kernel_says_what_to_do(fake_project: FakeProject,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("test", "kernel") == ExitCode.USER
    err = capsys.readouterr().err
    assert "kernel for profile ci (x86_64) is missing" in first_error_line(err) and "run: isobuild kernel" in err
    assert fake_project.run("kernel") == 0
    fake_project.set_series({})
    assert fake_project.run("test", "kernel") == ExitCode.USER
    assert "kernel for profile ci (x86_64) is stale" in first_error_line(capsys.readouterr().err)


def test_bad_boot_modes_are_refused_before_any_build(fake_project: FakeProject,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("debian", "--modes", "bios-floppy") == ExitCode.USER
    assert "boot mode(s) bios-floppy unknown" in first_error_line(capsys.readouterr().err)
    assert not (fake_project.work / "kernel").exists(), "nothing was built"


def test_second_run_is_a_fast_noop(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    capsys.readouterr()
    events = Events(fake_project.root / "logs")
    assert fake_project.run("kernel") == 0
    assert events.built() == set() and "make" not in events.commands() and "quilt" not in events.commands()
    assert "is up to date" in capsys.readouterr().out
    assert len(artifact_dirs(fake_project)) == 1


def test_changed_patch_rebuilds_incrementally(fake_project: FakeProject) -> None:
    assert fake_project.run("kernel") == 0
    first = metadata(fake_project)
    v2 = XSC_PATCH.replace("xsc_version = 1", "xsc_version = 2")
    fake_project.set_series({"0001-xsc.patch": v2})
    assert fake_project.run("kernel") == 0
    second = metadata(fake_project)
    assert second["key"] != first["key"]
    log = Path(second["log"]).read_text()
    compiled = [line.split()[-1] for line in log.splitlines() if line.startswith("  CC")]
    assert compiled == ["drivers/xsc.o"], "only the patched file is recompiled"
    current = fake_project.current("kernel-ci-x86_64")
    assert b"xsc_version = 2" in (current / "bzImage").read_bytes()
    # dropping the patch restores the pristine file and recompiles it too
    fake_project.set_series({})
    assert fake_project.run("kernel") == 0
    third = metadata(fake_project)
    compiled = [line.split()[-1] for line in Path(third["log"]).read_text().splitlines() if line.startswith("  CC")]
    assert compiled == ["drivers/xsc.o"]
    assert b"xsc_version" not in (fake_project.current("kernel-ci-x86_64") / "bzImage").read_bytes()


def test_config_is_kept_until_its_inputs_change(fake_project: FakeProject) -> None:
    """merge_config + olddefconfig run again only when the profile, a fragment, or a Kconfig file the
    series touches changed; a kept .config is still checked for dropped options."""
    def configured() -> list[str]:
        events = Events(fake_project.root / "logs")
        assert fake_project.run("kernel") == 0
        return [c for c in events.commands() if c in ("merge_config.sh", "make")]

    assert configured() == ["make", "merge_config.sh", "make", "make", "make", "make", "make"]
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("xsc_version = 1", "xsc_version = 2")})
    assert "merge_config.sh" not in configured(), "a patch to a .c file: the config stands"
    meta = metadata(fake_project)
    assert meta["config_kept"] is True and meta["kernel_release"] == "6.1.0-isobuild"
    assert meta["config"]["effective"]["CONFIG_FAKE_FEATURE"] == "y", "checked against the kept .config"
    kconfig = (FAKELINUX / "Kconfig").read_text()
    kconfig_patch = make_patch("Kconfig", kconfig, kconfig + "config FAKE_NEW\n")
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH, "0002-kconfig.patch": kconfig_patch})
    assert "merge_config.sh" in configured(), "the series touches a Kconfig file"
    assert metadata(fake_project)["config_kept"] is False
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("xsc_version = 1", "xsc_version = 4")})
    assert "merge_config.sh" in configured(), "its Kconfig change is gone again"
    (fake_project.root / "patches/kernel/xsc.config").write_text("CONFIG_FAKE_XSC=y\n# a comment\n")
    assert "merge_config.sh" in configured(), "a fragment changed"
    build = fake_project.work / "kernel/trees/ci-x86_64/build"
    (build / ".config").write_text((build / ".config").read_text() + "# edited by hand\n")
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("xsc_version = 1", "xsc_version = 3")})
    assert "merge_config.sh" in configured(), "a .config edited since: made again"
    assert "# edited by hand" not in (build / ".config").read_text()


def test_returning_to_earlier_inputs_reuses_and_repoints_current(fake_project: FakeProject,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    first = metadata(fake_project)["key"]
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("xsc_version = 1", "xsc_version = 7")})
    assert fake_project.run("kernel") == 0
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH})
    capsys.readouterr()
    assert fake_project.run("kernel") == 0
    assert "is up to date" in capsys.readouterr().out
    assert metadata(fake_project)["key"] == first, "current points at the reused artifact"
    assert json.loads((fake_project.record_path("kernel-ci-x86_64")).read_text())["last_good"] == first


def test_status_reports_built_then_names_the_changed_patch(fake_project: FakeProject,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("status", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["state"]) for r in rows] == [("kernel", "missing"), ("kernel-boot", "missing")]
    assert fake_project.run("kernel") == 0
    capsys.readouterr()
    assert fake_project.run("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "built"
    (fake_project.patches / "0001-xsc.patch").write_text(XSC_PATCH + "")
    (fake_project.patches / "0001-xsc.patch").write_text(XSC_PATCH.replace("xsc_version = 1", "xsc_version = 9"))
    assert fake_project.run("status", "--json") == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["state"] == "stale"
    assert "patches: 0001-xsc.patch changed" in row["detail"]
    assert fake_project.run("status", "--check") == ExitCode.CHECK_FAILED


def test_status_names_a_changed_fragment(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    (fake_project.root / "patches/kernel/xsc.config").write_text("CONFIG_FAKE_XSC=y\nCONFIG_FAKE_BASE=y\n")
    capsys.readouterr()
    assert fake_project.run("status", "--json") == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["state"] == "stale" and "patches/kernel/xsc.config changed" in row["detail"]


# --- bad input: a clear one-line error, the right exit code, nothing lost ---------------


def first_error_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("isobuild: error:"))


def build_good_then(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> Path:
    """Build once, return the last good artifact dir, so a test can check it survives."""
    assert fake_project.run("kernel") == 0
    capsys.readouterr()
    return (fake_project.current("kernel-ci-x86_64")).resolve()


def assert_last_good_intact(fake_project: FakeProject, good: Path) -> None:
    assert (fake_project.current("kernel-ci-x86_64")).resolve() == good
    assert (good / "bzImage").is_file() and (good / "metadata.json").is_file()


def test_missing_source_tarball(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    fake_project.tarball.unlink()
    assert fake_project.run("kernel") == ExitCode.USER
    assert "kernel source tarball not found" in first_error_line(capsys.readouterr().err)


def test_checksum_mismatch_refuses_to_build(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    settings = fake_project.settings()
    settings["kernel"]["source"]["sha256"] = "0" * 64
    fake_project.write_settings(settings)
    assert fake_project.run("kernel") == ExitCode.USER
    line = first_error_line(capsys.readouterr().err)
    assert "checksum mismatch" in line and "0" * 64 in line
    assert_last_good_intact(fake_project, good)


def test_series_names_a_missing_patch(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    (fake_project.patches / "series").write_text("0001-xsc.patch\n0002-gone.patch\n")
    assert fake_project.run("kernel") == ExitCode.USER
    line = first_error_line(capsys.readouterr().err)
    assert "series:2" in line and "0002-gone.patch not found" in line


def test_patch_that_does_not_apply_names_patch_file_hunk(fake_project: FakeProject,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    bad = make_patch("drivers/net.c", "/* fake driver */\nint other;\n", "/* fake driver */\nint other2;\n")
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH, "0002-net.patch": bad})
    assert fake_project.run("kernel") == ExitCode.USER
    line = first_error_line(capsys.readouterr().err)
    assert "patch 0002-net.patch does not apply" in line and "drivers/net.c hunk #1" in line
    assert_last_good_intact(fake_project, good)
    # no half-patched tree: the tree is pristine and its marker says so
    tree = fake_project.work / "kernel" / "trees" / "ci-x86_64"
    assert not (tree / "src" / ".pc").exists()
    assert "xsc_version" not in (tree / "src" / "drivers" / "xsc.c").read_text()
    marker = json.loads((tree / "tree.json").read_text())
    assert marker["series"] == []
    # fixing the series builds again, recompiling the file the failed attempt touched
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH})
    assert fake_project.run("kernel") == 0


def test_fuzz_is_refused(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    # context line differs ("int xsc;" -> "int xsc2;"): applies only with fuzz
    fuzzy = ("--- a/drivers/xsc.c\n+++ b/drivers/xsc.c\n@@ -1,2 +1,3 @@\n /* fake driver */\n int xsc2;\n"
             "+int x = 1;\n")
    fake_project.set_series({"0001-fuzzy.patch": fuzzy})
    assert fake_project.run("kernel") == ExitCode.USER
    assert "0001-fuzzy.patch does not apply at fuzz 0" in first_error_line(capsys.readouterr().err)


def test_patch_escaping_the_tree_is_refused_before_applying(fake_project: FakeProject,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    shutil.rmtree(fake_project.work / "kernel" / "trees")
    evil = make_patch("../outside.c", "", "int evil;\n")
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH, "0002-evil.patch": evil})
    assert fake_project.run("kernel") == ExitCode.USER
    line = first_error_line(capsys.readouterr().err)
    assert "0002-evil.patch touches 'a/../outside.c', outside the source tree" in line
    assert not (fake_project.work / "kernel" / "trees" / "ci-x86_64" / "src").exists(), "nothing was even extracted"
    absolute = "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n"
    fake_project.set_series({"0001-abs.patch": absolute})
    assert fake_project.run("kernel") == ExitCode.USER
    assert "touches '/etc/passwd'" in first_error_line(capsys.readouterr().err)
    assert_last_good_intact(fake_project, good)


def test_malformed_fragment_line(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    (fake_project.root / "patches/kernel/xsc.config").write_text("CONFIG_FAKE_XSC=y\nCONFIG_OOPS = yes\n")
    assert fake_project.run("kernel") == ExitCode.USER
    line = first_error_line(capsys.readouterr().err)
    assert "patches/kernel/xsc.config:2: malformed fragment line: 'CONFIG_OOPS = yes'" in line


def test_dropped_option_fails_naming_option_requested_and_actual(fake_project: FakeProject,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    (fake_project.root / "patches/kernel/xsc.config").write_text("CONFIG_FAKE_XSC=y\nCONFIG_FAKE_NEEDS_MISSING=y\n")
    assert fake_project.run("kernel") == ExitCode.USER
    err = capsys.readouterr().err
    assert "1 requested config option(s) did not land in the x86_64 .config: CONFIG_FAKE_NEEDS_MISSING" in \
        first_error_line(err)
    assert "CONFIG_FAKE_NEEDS_MISSING: requested y, got absent (patches/kernel/xsc.config)" in err
    assert "depends on FAKE_NOT_AVAILABLE" in err
    assert_last_good_intact(fake_project, good)


def test_unknown_key_in_isobuild_yaml(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    settings = fake_project.settings()
    settings["kernel"]["profil"] = "ci"
    fake_project.write_settings(settings)
    assert fake_project.run("kernel") == ExitCode.USER
    err = capsys.readouterr().err
    assert "isobuild.yaml: kernel.profil: unknown key" in first_error_line(err)
    assert "known keys here:" in err and "profile" in err


def test_wrong_type_and_bad_value_in_isobuild_yaml(fake_project: FakeProject,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    settings = fake_project.settings()
    settings["jobs"] = "many"
    fake_project.write_settings(settings)
    assert fake_project.run("kernel") == ExitCode.USER
    assert "isobuild.yaml: jobs: expected an integer, got 'many'" in first_error_line(capsys.readouterr().err)
    settings["jobs"] = 2
    settings["kernel"]["localversion"] = "-Has Spaces"
    fake_project.write_settings(settings)
    assert fake_project.run("kernel") == ExitCode.USER
    assert "isobuild.yaml: kernel.localversion: must be" in first_error_line(capsys.readouterr().err)


def test_missing_host_tool(fake_project: FakeProject, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a PATH with everything but quilt
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for tool in Path(d).glob("*") if Path(d).is_dir() else []:
            if tool.name != "quilt" and not (bindir / tool.name).exists():
                (bindir / tool.name).symlink_to(tool)
    monkeypatch.setenv("PATH", str(bindir))
    assert fake_project.run("kernel") == ExitCode.INFRA
    err = capsys.readouterr().err
    assert "quilt not found: the kernel stage needs it" in first_error_line(err)  # before any build
    assert "apt-get install quilt" in err


def test_compile_error_shows_compiler_lines(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    broken = make_patch("drivers/xsc.c", "/* fake driver */\nint xsc;\n",
                        "/* fake driver */\nint xsc;\n#error xsc is broken\n")
    fake_project.set_series({"0001-xsc.patch": broken})
    assert fake_project.run("kernel") == ExitCode.USER
    err = capsys.readouterr().err
    assert "kernel compile failed: drivers/xsc.c:1:2: error: #error xsc is broken" in first_error_line(err)
    assert "re-run by hand: cd " in err and "make O=" in err
    assert "full log: " in err
    assert_last_good_intact(fake_project, good)
    rec = json.loads((fake_project.record_path("kernel-ci-x86_64")).read_text())
    assert rec["status"] == "failed"


def test_warnings_are_counted(fake_project: FakeProject) -> None:
    warn = make_patch("drivers/xsc.c", "/* fake driver */\nint xsc;\n", "/* fake driver */\nint xsc;\n#warning w\n")
    fake_project.set_series({"0001-xsc.patch": warn})
    assert fake_project.run("kernel") == 0
    assert metadata(fake_project)["diagnostics"] == {"warnings": 1, "errors": 0}


def test_disk_full_is_an_infrastructure_error(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("= 1", "= 3")})
    (fake_project.work / "kernel/trees/ci-x86_64/src/FAKE_DISKFULL").write_text("")
    assert fake_project.run("kernel") == ExitCode.INFRA
    assert "disk full while running make" in first_error_line(capsys.readouterr().err)
    assert_last_good_intact(fake_project, good)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_disk_full_on_a_real_full_filesystem(fake_project: FakeProject, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        settings = fake_project.settings()
        settings["work_dir"] = str(small)
        fake_project.write_settings(settings)
        code = fake_project.run("kernel")
        assert code == ExitCode.INFRA
        line = first_error_line(capsys.readouterr().err)
        assert "disk full" in line or "No space left" in line
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_interrupted_build_keeps_last_good_and_status_says_so(fake_project: FakeProject,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("= 1", "= 4")})
    env = dict(os.environ, FAKE_SLEEP="30", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    # started with SIGINT ignored, as a background job of a script (`cmd &`, nohup, CI wrappers) is:
    # Python would install no handler of its own, isobuild does -- kill -INT still interrupts it
    proc = subprocess.Popen([sys.executable, "-m", "builder", "-c", str(fake_project.root / "isobuild.yaml"),
                             "kernel"], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    state = fake_project.record_path("kernel-ci-x86_64")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log_files = list((fake_project.root / "logs").glob("kernel-ci-*.log"))
        if any("  CC      drivers/xsc.o" in f.read_text() for f in log_files) and \
                json.loads(state.read_text()).get("status") == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err
    assert json.loads(state.read_text())["status"] == "interrupted"
    assert_last_good_intact(fake_project, good)
    assert fake_project.run("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "interrupted"
    # the next run finishes the job
    assert fake_project.run("kernel") == 0


def test_killed_build_is_reported_as_killed(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(os.environ, FAKE_SLEEP="30", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "builder", "-c", str(fake_project.root / "isobuild.yaml"),
                             "kernel"], env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    state = fake_project.record_path("kernel-ci-x86_64")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (state.exists() and "compile" in
                                               (fake_project.root / "logs" / "isobuild.jsonl").read_text()):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fake_project.run("status", "--json") == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["state"] == "killed" and "log" in row["detail"]


def test_work_dir_lock_keeps_two_runs_apart(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    from builder.infra import lock

    with lock.held(fake_project.work):
        assert fake_project.run("kernel") == ExitCode.INFRA
    assert "is in use by another isobuild run" in first_error_line(capsys.readouterr().err)


def test_clean_keeps_last_good_and_sources(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    good = build_good_then(fake_project, capsys)
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("= 1", "= 5")})
    assert fake_project.run("kernel") == 0
    newest = (fake_project.current("kernel-ci-x86_64")).resolve()
    assert newest != good
    assert fake_project.run("clean") == 0
    assert newest.exists() and not good.exists()
    trees = fake_project.work / "kernel" / "trees"
    assert not trees.exists() or not any(trees.iterdir())
    capsys.readouterr()
    assert fake_project.run("kernel") == 0
    assert "is up to date" in capsys.readouterr().out


def test_git_source(fake_project: FakeProject, tmp_path: Path) -> None:
    import git

    repo_dir = tmp_path / "linux.git"
    subprocess.run(["cp", "-a", str(Path(__file__).parent / "fakelinux"), str(repo_dir)], check=True)
    repo = git.Repo.init(repo_dir)
    repo.git.add(A=True)
    repo.index.commit("fake linux")
    repo.create_tag("v6.1-fake")
    settings = fake_project.settings()
    settings["kernel"]["source"] = {"type": "git", "url": str(repo_dir), "ref": "v6.1-fake"}
    fake_project.write_settings(settings)
    assert fake_project.run("kernel") == 0
    meta = metadata(fake_project)
    assert meta["inputs"]["source"] == {"kind": "git", "url": str(repo_dir), "commit": repo.head.commit.hexsha}
    settings["kernel"]["source"]["ref"] = "no-such-ref"
    fake_project.write_settings(settings)
    assert fake_project.run("kernel") == ExitCode.USER


def test_status_names_a_changed_source(fake_project: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    import tarfile

    from tests.conftest import FAKELINUX, sha256

    assert fake_project.run("kernel") == 0
    with tarfile.open(fake_project.tarball, "w:gz") as tar:  # a new upstream release of the source
        tar.add(FAKELINUX, arcname="linux-fake")
        extra = fake_project.tarball.parent / "NEWS"
        extra.write_text("6.1.1\n")
        tar.add(extra, arcname="linux-fake/NEWS")
    settings = fake_project.settings()
    settings["kernel"]["source"]["sha256"] = sha256(fake_project.tarball)
    fake_project.write_settings(settings)
    capsys.readouterr()
    assert fake_project.run("status", "--json") == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["state"] == "stale" and row["detail"].startswith("source.sha256: ")


def test_a_corrupt_state_file_is_reported_and_recovered(fake_project: FakeProject,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    state_file = fake_project.record_path("kernel-ci-x86_64")
    state_file.write_text('{"stage": "kernel", "key": ')  # a crash mid-write by something else
    capsys.readouterr()
    assert fake_project.run("status", "--json") == 0, "no traceback"
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["state"] == "built", "the artifact itself is intact"
    assert "state.corrupt" in captured.err and str(state_file) in captured.err
    assert fake_project.run("kernel", "--force") == 0
    assert json.loads(state_file.read_text())["status"] == "ok", "rewritten whole"
