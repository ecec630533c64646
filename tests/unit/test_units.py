"""Unit tests: each module's logic on small inputs (real tools where they are quick)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from builder.infra import atomic, keys, progress, runner, schema
from builder.infra.arch import ARCHES
from builder.infra.config import Settings
from builder.infra.digests import DigestCache
from builder.infra.errors import InfraError, UserError
from builder.tools import console, kconfig, qemu, quilt

# --- schema ---------------------------------------------------------------------------


@dataclass
class Inner:
    name: str = schema.setting("x", help="a name", check=schema.matches(r"[a-z]+", "lowercase letters"))


@dataclass
class Outer:
    count: int = schema.setting(1, help="how many", check=schema.at_least(0))
    mode: Literal["a", "b"] = schema.setting("a", help="which")
    inner: Inner = schema.setting(factory=Inner, help="inner")
    items: list[str] = schema.setting(factory=list, help="items")


def test_schema_accepts_and_fills_defaults() -> None:
    obj = schema.load(Outer, {"count": 3, "inner": {"name": "abc"}}, "f.yaml")
    assert obj == Outer(count=3, mode="a", inner=Inner("abc"), items=[])


@pytest.mark.parametrize(("data", "message"), [
    ({"cont": 1}, "f.yaml: cont: unknown key"),
    ({"count": "1"}, "f.yaml: count: expected an integer, got '1'"),
    ({"count": True}, "f.yaml: count: expected an integer, got True"),
    ({"count": -1}, "f.yaml: count: must be >= 0 (got -1)"),
    ({"mode": "c"}, "f.yaml: mode: expected one of 'a', 'b', got 'c'"),
    ({"inner": {"name": "ABC"}}, "f.yaml: inner.name: must be lowercase letters (got 'ABC')"),
    ({"inner": {"nme": "a"}}, "f.yaml: inner.nme: unknown key"),
    ({"items": "a"}, "f.yaml: items: expected a list, got str"),
    ({"items": ["a", {"b": 1}]}, "f.yaml: items[1]: expected a string"),
    ([], "f.yaml: (top level): expected a mapping, got list"),
])
def test_schema_names_file_and_key(data: object, message: str) -> None:
    with pytest.raises(UserError) as exc:
        schema.load(Outer, data, "f.yaml")
    assert exc.value.message.startswith(message)


def test_settings_cross_field_validation_and_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"kernel\.source: type 'tarball' needs both 'path' and 'sha256'"):
        schema.load(Settings, {"kernel": {"source": {"type": "tarball", "path": "x"}}}, "isobuild.yaml")
    with pytest.raises(UserError, match="sha256: must be 64 lowercase hex digits"):
        schema.load(Settings, {"kernel": {"source": {"type": "tarball", "path": "x", "sha256": "abc"}}}, "i.yaml")
    bad = tmp_path / "isobuild.yaml"
    bad.write_text("kernel:\n  profile: [unclosed\n")
    with pytest.raises(UserError, match=r"isobuild.yaml:\d+: not valid YAML"):
        schema.load_file(Settings, bad)


def test_repository_settings_and_profiles_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    settings = schema.load_file(Settings, root / "isobuild.yaml")
    assert settings.kernel.profile == "default"
    for name in ("ci", "default"):
        profile = kconfig.load_profile(root, name, settings.kernel.fragments)
        assert profile.requested()["CONFIG_XSC"] == ("y", "patches/kernel/xsc.config")
        assert profile.requested()["CONFIG_SQUASHFS"][0] == "y"
    assert [d for d, _, _ in schema.describe(Settings)][:2] == ["work_dir", "logs_dir"]


# --- series and patches ---------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_series_comments_blank_lines_and_strip_levels(tmp_path: Path) -> None:
    write(tmp_path / "a.patch", "")
    write(tmp_path / "sub/b.patch", "")
    write(tmp_path / "series", "# header\n\na.patch   # trailing comment\nsub/b.patch -p0\n")
    series = quilt.read_series(tmp_path)
    assert [(p.name, p.strip, p.series_line) for p in series] == [("a.patch", 1, 3), ("sub/b.patch", 0, 4)]


@pytest.mark.parametrize(("series", "message"), [
    ("a.patch -R\n", "series:1: unsupported option '-R' for a.patch"),
    ("a.patch\na.patch\n", "series:2: a.patch is listed twice"),
    ("../a.patch\n", "series:1: patch name '../a.patch' must be a path inside"),
    ("missing.patch\n", "series:1: patch missing.patch not found"),
])
def test_series_errors(tmp_path: Path, series: str, message: str) -> None:
    write(tmp_path / "a.patch", "")
    write(tmp_path / "series", series)
    with pytest.raises(UserError) as exc:
        quilt.read_series(tmp_path)
    assert message in exc.value.message


def test_missing_series_means_no_patches_but_missing_dir_is_an_error(tmp_path: Path) -> None:
    assert quilt.read_series(tmp_path) == []
    with pytest.raises(UserError, match="patch directory not found"):
        quilt.read_series(tmp_path / "nope")


def one(tmp_path: Path, text: str, strip: int = 1) -> quilt.Patch:
    path = write(tmp_path / "p.patch", text)
    return quilt.Patch("p.patch", strip, path, "", 1)


def test_touched_paths_skips_hunk_bodies(tmp_path: Path) -> None:
    # a removed line "-- x" appears as "--- x" inside the hunk: not a header
    text = ("--- a/doc.txt\n+++ b/doc.txt\n@@ -1 +1 @@\n--- ../../etc/passwd\n+++ /etc/shadow\n"
            "diff --git a/x b/y\nrename from old/name.c\nrename to new/name.c\n")
    assert quilt.touched_paths(one(tmp_path, text)) == ["doc.txt", "x", "y", "old/name.c", "new/name.c"]


@pytest.mark.parametrize("header", [
    "--- a/../x\n+++ b/../x\n", "--- /abs\n+++ /abs\n", "--- a/ok\n+++ b/sub/../../x\n",
    'rename from ../x\nrename to y\n', '--- "a/../q"\n+++ "b/../q"\n', "copy from ok\ncopy to ../../x\n",
    "diff --git a/../../etc/cron.d/x b/../../etc/cron.d/x\n", "Index: /etc/passwd\n",
    'diff --git "a/\\056\\056/x" "b/\\056\\056/x"\n',
])
def test_touched_paths_refuses_escapes(tmp_path: Path, header: str) -> None:
    with pytest.raises(UserError, match="outside the source tree"):
        quilt.touched_paths(one(tmp_path, header + "@@ -1 +1 @@\n-a\n+b\n"))


def test_dev_null_and_strip_zero(tmp_path: Path) -> None:
    text = "--- /dev/null\n+++ new/file.c\n@@ -0,0 +1 @@\n+x\n"
    assert quilt.touched_paths(one(tmp_path, text, strip=0)) == ["new/file.c"]


def test_parse_push_output() -> None:
    out = """Applying patch 0001-a.patch
patching file x.c
Applying patch patches/0002-b.patch
patching file drivers/y.c
Hunk #1 succeeded at 10 (offset 2 lines).
Hunk #2 FAILED at 40.
1 out of 2 hunks FAILED -- rejects in file drivers/y.c
can't find file to patch at input line 12
Patch patches/0002-b.patch does not apply (enforce with -f)
"""
    failures = quilt.parse_push_output(out)
    assert [f.describe() for f in failures] == [
        "drivers/y.c hunk #2 (at line 40): hunk does not apply",
        "drivers/y.c: file to patch not found"]
    assert all(f.patch == "0002-b.patch" for f in failures)








# --- kconfig ---------------------------------------------------------------------------


def test_fragment_grammar(tmp_path: Path) -> None:
    frag = write(tmp_path / "f.config", '# c\n\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D="x y"\n'
                                        "CONFIG_E=-3\nCONFIG_F=0x1F\n")
    assert kconfig.parse_fragment(frag, "f.config").options == {
        "CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_C": "n", "CONFIG_D": '"x y"', "CONFIG_E": "-3", "CONFIG_F": "0x1F"}


@pytest.mark.parametrize("line", ["CONFIG_A=yes", "CONFIG_A = y", "A=y", "# CONFIG_A is off", 'CONFIG_A="open'])
def test_fragment_rejects_malformed_lines(tmp_path: Path, line: str) -> None:
    frag = write(tmp_path / "f.config", f"CONFIG_OK=y\n{line}\n")
    with pytest.raises(UserError, match=r"f.config:2: malformed fragment line"):
        kconfig.parse_fragment(frag, "f.config")


def test_diff_requested_later_fragment_wins_and_n_may_be_absent(tmp_path: Path) -> None:
    a = kconfig.parse_fragment(write(tmp_path / "a", "CONFIG_X=m\nCONFIG_Y=y\n"), "a")
    b = kconfig.parse_fragment(write(tmp_path / "b", "CONFIG_X=y\n# CONFIG_Z is not set\nCONFIG_S=\"v\"\n"), "b")
    prof = kconfig.Profile("p", tmp_path, "defconfig", None, [a, b])
    final = {"CONFIG_X": "m", "CONFIG_Y": "y", "CONFIG_S": '"w"'}
    assert [(m.option, m.requested, m.actual, m.fragment) for m in kconfig.diff_requested(prof, final)] == [
        ("CONFIG_S", '"v"', '"w"', "b"), ("CONFIG_X", "y", "m", "b")]


def test_explain_finds_definition_dependencies_and_enclosing_if(tmp_path: Path) -> None:
    write(tmp_path / "Kconfig", 'menu "x"\nif OUTER # c\nsource "fs/Kconfig.sub"\nendif # OUTER\nendmenu\n')
    write(tmp_path / "fs/Kconfig.sub", "config FOO\n\tbool \"foo\"\n\tdepends on BAR && BAZ\n")
    write(tmp_path / "arch/s390/Kconfig", "config S390_ONLY\n\tbool\n")
    assert kconfig.explain(tmp_path, "CONFIG_FOO") == (
        "defined at fs/Kconfig.sub:1; depends on BAR && BAZ; inside if OUTER (Kconfig:2)")
    assert kconfig.explain(tmp_path, "CONFIG_S390_ONLY") == \
        "defined only under other architectures, not x86: arch/s390/Kconfig:1 (architecture s390)"
    assert "no Kconfig in this source defines it" in kconfig.explain(tmp_path, "CONFIG_NOPE")


# --- stage keys ------------------------------------------------------------------------


def test_stage_key_is_stable_and_changes_are_named() -> None:
    a = {"stage": "kernel", "patches": [{"name": "1.patch", "sha256": "a" * 64}], "toolchain": "gcc 12"}
    b = {"stage": "kernel", "patches": [{"name": "1.patch", "sha256": "b" * 64}, {"name": "2.patch"}],
         "toolchain": "gcc 13"}
    assert keys.compute(a) == keys.compute(json.loads(json.dumps(a)))
    assert keys.compute(a) != keys.compute(b)
    assert keys.changes(a, b) == ["patches: 2.patch added", "patches: 1.patch changed",
                                      "toolchain: gcc 12 -> gcc 13"]
    assert keys.changes({"s": "a" * 64}, {"s": "b" * 64}) == ["s: aaaaaaaaaaaa -> bbbbbbbbbbbb"]


def test_digest_cache_rehashes_only_on_change(tmp_path: Path) -> None:
    f = write(tmp_path / "f", "one")
    cache = DigestCache(tmp_path / "d.json")
    first = cache.sha256(f)
    cache.save()
    again = DigestCache(tmp_path / "d.json")
    assert again.sha256(f) == first and not again._dirty
    time.sleep(0.01)
    f.write_text("two")
    assert again.sha256(f) != first


# --- initramfs -------------------------------------------------------------------------








# --- console ---------------------------------------------------------------------------


def watch() -> console.Watch:
    return console.Watch(console.Expect({"UNAME": r"6\.1\.0-isobuild", "MARKER": r"\d+\.\d+\.\d+"}))


def test_console_pass() -> None:
    w = watch()
    for line in ["Linux version 6.1.0", "ISOBUILD-UNAME 6.1.0-isobuild\r", "ISOBUILD-MARKER 1.0.0"]:
        assert not w.feed(line)
    assert w.feed("ISOBUILD-DONE")
    v = w.verdict(False, None)
    assert (v.status, v.reasons, v.markers) == ("pass", [], {"UNAME": "6.1.0-isobuild", "MARKER": "1.0.0"})


def test_console_wrong_release_missing_marker_and_timeout() -> None:
    w = watch()
    w.feed("ISOBUILD-UNAME 6.1.0-other")
    w.feed("ISOBUILD-MARKER-MISSING /sys/kernel/xsc/version")
    v = w.verdict(True, None)
    assert v.status == "fail"
    assert v.reasons == ["timed out before the guest finished its checks",
                         "marker UNAME: expected '6\\\\.1\\\\.0-isobuild', got '6.1.0-other'",
                         "marker MARKER not reported (/sys/kernel/xsc/version absent in the guest)"]


def test_console_panic_stops_after_context_and_oops_fails_warning_reports() -> None:
    w = watch()
    w.feed("------------[ cut here ]------------")
    w.feed("WARNING: CPU: 0 PID: 1 at foo.c:1")
    w.feed("BUG: kernel NULL pointer dereference, address: 0")
    w.feed("Oops: 0000 [#1] SMP")
    assert not w.feed("Kernel panic - not syncing: Attempted to kill init!")
    stops = [w.feed(f"ctx {i}") for i in range(7)]
    assert stops[-1] is True
    v = w.verdict(False, None)
    assert v.reasons[0] == "kernel panic: Kernel panic - not syncing: Attempted to kill init!"
    assert any(r.startswith("kernel oops:") for r in v.reasons) and any(r.startswith("kernel bug:") for r in v.reasons)
    assert not any("warning" in r for r in v.reasons)
    assert any(f.startswith("warning:") for f in v.findings) and any(f.startswith("cut-here") for f in v.findings)


# --- qemu ------------------------------------------------------------------------------


def test_probe_image_is_a_boot_sector() -> None:
    img = qemu.probe_image()
    assert len(img) == 512 and img[-2:] == b"\x55\xaa"




def test_forced_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    qemu.accelerator.cache_clear()
    monkeypatch.setenv("ISOBUILD_ACCEL", "tcg")
    assert qemu.accelerator(ARCHES["x86_64"]) == "tcg"
    qemu.accelerator.cache_clear()
    monkeypatch.setenv("ISOBUILD_ACCEL", "xen")
    with pytest.raises(UserError, match="expected kvm or tcg"):
        qemu.accelerator(ARCHES["x86_64"])
    qemu.accelerator.cache_clear()


# CPUID.(EAX=7,ECX=0): EBX bit 9 is ERMS, EDX bit 4 is FSRM; the sector writes
# erms | fsrm << 1 to isa-debug-exit, so QEMU exits with (that << 1) | 1.
_CPUID_SECTOR = bytes([
    0x66, 0xB8, 0x07, 0x00, 0x00, 0x00,  # mov eax, 7
    0x66, 0x31, 0xC9,                    # xor ecx, ecx
    0x0F, 0xA2,                          # cpuid
    0x66, 0xC1, 0xEB, 0x09,              # shr ebx, 9
    0x66, 0x83, 0xE3, 0x01,              # and ebx, 1
    0x66, 0xC1, 0xEA, 0x03,              # shr edx, 3
    0x66, 0x83, 0xE2, 0x02,              # and edx, 2
    0x66, 0x09, 0xD3,                    # or ebx, edx
    0x88, 0xD8,                          # mov al, bl
    0xE6, 0xF4,                          # out 0xf4, al
    0xEB, 0xFE,                          # jmp $
])


def _guest_fast_strings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu: str | None) -> tuple[bool, bool]:
    if cpu is None:
        monkeypatch.delenv("ISOBUILD_QEMU_CPU", raising=False)
    else:
        monkeypatch.setenv("ISOBUILD_QEMU_CPU", cpu)
    image = tmp_path / "cpuid.img"
    image.write_bytes(_CPUID_SECTOR + bytes(510 - len(_CPUID_SECTOR)) + b"\x55\xaa")
    result = runner.run(qemu.probe_argv(ARCHES["x86_64"], "tcg", image), timeout=30, check=False)
    assert result.returncode & 1, result.returncode  # the sector ran to its out instruction
    bits = result.returncode >> 1
    return bool(bits & 1), bool(bits & 2)




def test_cpu_model_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOBUILD_QEMU_CPU", raising=False)
    assert qemu.cpu_model("kvm") == "host" and qemu.cpu_model("tcg") == qemu.TCG_CPU
    monkeypatch.setenv("ISOBUILD_QEMU_CPU", "Nehalem")
    assert qemu.cpu_model("kvm") == qemu.cpu_model("tcg") == "Nehalem"


def test_kernel_argv() -> None:
    argv = qemu.kernel_argv(ARCHES["x86_64"], Path("/k"), Path("/i"), "console=ttyS0", 512, "tcg")
    assert argv[:8] == ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max,-erms,-fsrm", "-m"]
    assert "-no-reboot" in argv and argv[argv.index("-append") + 1] == "console=ttyS0"


# --- runner ----------------------------------------------------------------------------










# --- atomic, progress ------------------------------------------------------------------


def test_atomic_writes_are_readable_by_everyone(tmp_path: Path) -> None:
    atomic.write_text(tmp_path / "f", "x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_new_dir_failure_keeps_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "art"
    with atomic.new_dir(final) as d:
        (d / "f").write_text("good")
    with pytest.raises(RuntimeError), atomic.new_dir(final) as d:
        (d / "f").write_text("half")
        raise RuntimeError("boom")
    assert (final / "f").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"], "no temp dirs left behind"


def test_progress_counts_kbuild_steps_and_estimates() -> None:
    stream = io.StringIO()
    p = progress.Progress("kernel.compile", expected=4, stream=stream)
    p.start -= 10
    for line in ["  CC      a.o", "make[1]: Entering", "  LD      vmlinux"]:
        p.line(line)
    assert p.done == 2
    assert p.render().startswith("kernel.compile: 2/4 steps (50%), 00:10 elapsed, ETA 00:1")


# --- doctor and sources ----------------------------------------------------------------


def test_doctor_reports_missing_tools_with_the_apt_line(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from builder import cli
    from builder.commands import doctor

    monkeypatch.setenv("PATH", "/nonexistent")
    missing = doctor.missing()
    assert {"quilt", "make", "qemu-system-x86_64"} <= {t.name for t in missing}
    assert cli.main(["doctor", "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["install"].startswith("apt-get install -y ") and " quilt " in report["install"] + " "
    assert cli.main(["doctor"]) == 3
    out = capsys.readouterr().out
    assert "MISSING  quilt" in out and "apt-get install -y" in out
    assert doctor.install_hint("qemu-system-x86_64").startswith("apt-get install qemu-system-x86")


@pytest.mark.parametrize(("argv", "full"), [
    (["debian", "--no-smok"], "--no-smoke"), (["--verb", "status"], "--verbose"),
    (["test", "debian", "--mode", "bios-cd"], "--modes"), (["patches", "check", "--compon", "kernel"], "--component"),
    (["release", "verify", "--ke", "k"], "--key")])
def test_cli_refuses_abbreviated_options(argv: list[str], full: str, capsys: pytest.CaptureFixture[str]) -> None:
    # an abbreviation that parses today silently changes meaning when an option
    # with the same prefix is added; spell options out
    from builder import cli

    cli.parser().parse_args([full if a.startswith("--") else a for a in argv])  # the option exists
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err




def test_missing_debian_source_package_is_an_infrastructure_error(tmp_path: Path) -> None:
    from builder.infra.config import SourceSettings
    from builder.tools import sources

    settings = SourceSettings(package="linux-source-0.1")
    with pytest.raises(InfraError) as exc:
        sources.resolve(None, settings, DigestCache(tmp_path / "d"))  # type: ignore[arg-type]
    assert exc.value.message == ("/usr/src/linux-source-0.1.tar.*: Debian source package linux-source-0.1 "
                                 "is not installed")
    assert exc.value.hint == "apt-get install linux-source-0.1"
