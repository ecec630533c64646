"""isobuild release / release verify with real gpg (a throwaway key made per test) over
small fake ISOs: the thing under test is the summing and signing, not the ISO."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from builder import cli
from builder.infra.errors import ExitCode


@dataclass
class Keyring:
    home: Path

    def gen(self, uid: str, passphrase: str = "") -> str:
        """A new ed25519 signing key; returns its fingerprint."""
        subprocess.run(["gpg", "--batch", "--homedir", str(self.home), "--passphrase", passphrase,
                        "--quick-gen-key", uid, "ed25519", "sign", "never"], check=True, capture_output=True)
        out = subprocess.run(["gpg", "--batch", "--homedir", str(self.home), "--with-colons", "--list-keys", uid],
                             check=True, capture_output=True, text=True).stdout
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def make_keyring() -> Keyring:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is not installed: apt-get install gnupg (isobuild doctor --install)")
    # a short path: gpg-agent's socket name must fit in a sockaddr_un
    home = Path(tempfile.mkdtemp(prefix="ib-gpg-", dir="/tmp"))
    home.chmod(0o700)
    return Keyring(home)


def drop_keyring(ring: Keyring) -> None:
    subprocess.run(["gpgconf", "--homedir", str(ring.home), "--kill", "gpg-agent"], check=False, capture_output=True)
    shutil.rmtree(ring.home, ignore_errors=True)


@pytest.fixture
def keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[Keyring]:
    ring = make_keyring()
    monkeypatch.setenv("GNUPGHOME", str(ring.home))
    yield ring
    drop_keyring(ring)


@pytest.fixture(scope="module")
def release_key() -> Iterator[tuple[Keyring, str]]:
    """One keyring and key for the tests that only need a good key (key generation costs ~1 s)."""
    ring = make_keyring()
    yield ring, ring.gen("isobuild release <release@isobuild.invalid>")
    drop_keyring(ring)


@dataclass
class Project:
    root: Path

    @property
    def iso(self) -> Path:
        return self.root / "iso"

    def run(self, *args: str) -> int:
        return cli.main(["-c", str(self.root / "isobuild.yaml"), *args])

    def settings(self, **release: str) -> None:
        data = {"work_dir": str(self.root.parent / "work")}
        if release:
            data["release"] = release  # type: ignore[assignment]
        (self.root / "isobuild.yaml").write_text(yaml.safe_dump(data))

    def add_iso(self, distro: str, name: str, size: int = 256 * 1024) -> Path:
        """A fake ISO with the ISO stage's sidecars: .sha256 and .manifest.json."""
        import hashlib

        iso = self.iso / distro / f"{name}.iso"
        iso.parent.mkdir(parents=True, exist_ok=True)
        iso.write_bytes(os.urandom(size))
        digest = hashlib.sha256(iso.read_bytes()).hexdigest()
        iso.with_name(iso.name + ".sha256").write_text(f"{digest}  {iso.name}\n")
        iso.with_name(f"{name}.manifest.json").write_text(f'{{"iso": "{iso.name}", "sha256": "{digest}"}}\n')
        return iso


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    p = Project(root)
    p.settings()
    p.add_iso("debian", "isobuild-debian")
    p.add_iso("rocky", "isobuild-rocky")
    monkeypatch.delenv("ISOBUILD_WORK_DIR", raising=False)
    monkeypatch.delenv("ISOBUILD_GPG_PASSPHRASE", raising=False)
    monkeypatch.chdir(root)
    yield p
    os.chdir(Path(__file__).resolve().parents[2])


@pytest.fixture
def signed(project: Project, release_key: tuple[Keyring, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The project released with the shared key; returns the key's fingerprint."""
    ring, fpr = release_key
    monkeypatch.setenv("GNUPGHOME", str(ring.home))
    assert project.run("release", "--key", fpr) == 0
    return fpr


def error_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("isobuild: error:"))


FILES = ["debian/isobuild-debian.iso", "debian/isobuild-debian.manifest.json",
         "rocky/isobuild-rocky.iso", "rocky/isobuild-rocky.manifest.json"]


def test_release_writes_sorted_relative_sums_and_signatures_that_the_real_tools_accept(
        project: Project, release_key: tuple[Keyring, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ring, signed = release_key
    monkeypatch.setenv("GNUPGHOME", str(ring.home))
    assert project.run("release", "--key", signed) == 0
    sums = (project.iso / "SHA256SUMS").read_text()
    assert [line.split("  ")[1] for line in sums.splitlines()] == FILES
    # the plain tools agree: sha256sum -c in the release dir, gpg --verify on each signature
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=project.iso, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 4
    for sig, data in (("SHA256SUMS.asc", "SHA256SUMS"), *((f"{f}.asc", f) for f in FILES if f.endswith(".iso"))):
        assert (project.iso / sig).read_text().startswith("-----BEGIN PGP SIGNATURE-----")
        subprocess.run(["gpg", "--batch", "--verify", sig, data], cwd=project.iso, check=True, capture_output=True)
    assert not [p for p in project.iso.rglob(".*")], "no temp file is left behind"
    assert "2 ISO(s) signed by " + signed in capsys.readouterr().out
    assert list((project.root / "logs").glob("release-*.log")), "gpg's output is logged"

    assert project.run("release", "verify", "--key", signed) == 0
    out = capsys.readouterr().out
    assert all(f"ok {f}" in out for f in FILES) and f"signed by {signed}" in out


def test_a_flipped_byte_in_an_iso_fails_verify_naming_it(project: Project, signed: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    iso = project.iso / "rocky" / "isobuild-rocky.iso"
    data = bytearray(iso.read_bytes())
    data[len(data) // 2] ^= 0x01
    iso.write_bytes(bytes(data))
    capsys.readouterr()
    assert project.run("release", "verify") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "rocky/isobuild-rocky.iso: sha256 mismatch" in error_line(err)
    assert "rocky/isobuild-rocky.iso: BAD signature" in err  # its own signature says so too


@pytest.mark.parametrize(("removed", "named"), [
    ("SHA256SUMS.asc", "SHA256SUMS: signature SHA256SUMS.asc is missing"),
    ("debian/isobuild-debian.iso.asc", "debian/isobuild-debian.iso: signature isobuild-debian.iso.asc is missing"),
    ("debian/isobuild-debian.manifest.json", "debian/isobuild-debian.manifest.json: missing"),
])
def test_a_removed_file_or_signature_fails_verify_naming_it(project: Project, signed: str, removed: str, named: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (project.iso / removed).unlink()
    capsys.readouterr()
    assert project.run("release", "verify") == ExitCode.CHECK_FAILED
    assert named in error_line(capsys.readouterr().err)


def test_sums_rewritten_to_match_a_changed_iso_fail_on_their_signature(project: Project, signed: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    iso = project.iso / "debian" / "isobuild-debian.iso"
    old = hashlib.sha256(iso.read_bytes()).hexdigest()
    iso.write_bytes(b"evil" + iso.read_bytes()[4:])
    sums = project.iso / "SHA256SUMS"
    sums.write_text(sums.read_text().replace(old, hashlib.sha256(iso.read_bytes()).hexdigest()))
    capsys.readouterr()
    assert project.run("release", "verify") == ExitCode.CHECK_FAILED
    err = capsys.readouterr().err
    assert "SHA256SUMS: BAD signature" in error_line(err)
    assert "debian/isobuild-debian.iso: BAD signature" in err


def test_an_iso_outside_the_release_fails_verify(project: Project, signed: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    project.add_iso("alma", "isobuild-alma")
    capsys.readouterr()
    assert project.run("release", "verify") == ExitCode.CHECK_FAILED
    assert "alma/isobuild-alma.iso: not listed in SHA256SUMS" in error_line(capsys.readouterr().err)


def test_verify_pins_the_release_key(project: Project, keyring: Keyring, capsys: pytest.CaptureFixture[str]) -> None:
    ours = keyring.gen("isobuild release <release@isobuild.invalid>")
    theirs = keyring.gen("someone else <else@isobuild.invalid>")
    assert project.run("release", "--key", theirs) == 0
    assert project.run("release", "verify") == 0, "no key pinned: any good signature gpg knows"
    capsys.readouterr()
    assert project.run("release", "verify", "--key", ours) == ExitCode.CHECK_FAILED
    assert f"SHA256SUMS: signed by {theirs}, not by the release key {ours}" in error_line(capsys.readouterr().err)
    project.settings(key=ours)  # release.key pins it as well
    assert project.run("release", "verify") == ExitCode.CHECK_FAILED


def test_verify_a_release_assembled_elsewhere(project: Project, signed: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dist"
    assert project.run("release", "--key", signed, "--out", str(out)) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*FILES, "SHA256SUMS", "SHA256SUMS.asc", "debian/isobuild-debian.iso.asc", "rocky/isobuild-rocky.iso.asc"])
    iso = out / "debian" / "isobuild-debian.iso"
    assert iso.stat().st_ino == (project.iso / "debian" / "isobuild-debian.iso").stat().st_ino, "hard-linked"
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out).returncode == 0
    assert project.run("release", "verify", str(out)) == 0
    assert f"release in {out} verifies: 4 file(s)" in capsys.readouterr().out


def test_a_key_with_a_passphrase(project: Project, keyring: Keyring, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = keyring.gen("good <good@isobuild.invalid>")
    assert project.run("release", "--key", good) == 0
    before = {p: p.read_bytes() for p in project.iso.rglob("*") if p.is_file()}
    locked = keyring.gen("locked <locked@isobuild.invalid>", passphrase="sekrit")
    capsys.readouterr()
    assert project.run("release", "--key", locked) == ExitCode.USER  # batch, no tty, no passphrase: no prompt
    err = capsys.readouterr().err
    assert f"gpg could not sign isobuild-debian.iso with {locked}" in error_line(err)
    assert "ISOBUILD_GPG_PASSPHRASE" in err
    assert {p: p.read_bytes() for p in project.iso.rglob("*") if p.is_file()} == before, \
        "a failed release leaves the previous one whole, with no temp files"
    monkeypatch.setenv("ISOBUILD_GPG_PASSPHRASE", "sekrit")
    assert project.run("release", "--key", locked) == 0
    assert project.run("release", "verify", "--key", locked) == 0


def test_gnupg_home_from_the_settings(project: Project, release_key: tuple[Keyring, str],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ring, fpr = release_key
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "elsewhere"))
    project.settings(key=fpr, gnupg_home=str(ring.home))
    assert project.run("release") == 0
    assert project.run("release", "verify") == 0
    project.settings(key=fpr, gnupg_home="no-such-dir")
    capsys.readouterr()
    assert project.run("release") == ExitCode.USER
    assert "release.gnupg_home" in error_line(capsys.readouterr().err)


# --- bad input ------------------------------------------------------------------------------


def test_missing_signing_key_names_it_and_says_how_to_list_keys(project: Project, keyring: Keyring,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert project.run("release", "--key", "nobody@isobuild.invalid") == ExitCode.USER
    err = capsys.readouterr().err
    assert "signing key 'nobody@isobuild.invalid': no secret key" in error_line(err)
    assert "gpg --list-secret-keys" in err and "gpg --import" in err
    assert not (project.iso / "SHA256SUMS").exists()


def test_no_key_configured(project: Project, keyring: Keyring, capsys: pytest.CaptureFixture[str]) -> None:
    assert project.run("release") == ExitCode.USER
    assert "no signing key: set release.key in isobuild.yaml or pass --key" in error_line(capsys.readouterr().err)


def test_an_ambiguous_key_lists_the_candidates(project: Project, keyring: Keyring,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    one, two = keyring.gen("twin <a@isobuild.invalid>"), keyring.gen("twin <b@isobuild.invalid>")
    assert project.run("release", "--key", "twin") == ExitCode.USER
    err = capsys.readouterr().err
    assert "signing key 'twin' matches 2 secret keys" in error_line(err) and one in err and two in err


def test_no_isos_built_yet(project: Project, signed: str, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(project.iso)
    capsys.readouterr()
    assert project.run("release", "--key", signed) == ExitCode.USER
    err = capsys.readouterr().err
    assert "no ISOs in" in error_line(err) and "isobuild debian" in err


def test_an_iso_without_its_manifest(project: Project, signed: str, capsys: pytest.CaptureFixture[str]) -> None:
    (project.iso / "rocky" / "isobuild-rocky.manifest.json").unlink()
    capsys.readouterr()
    assert project.run("release", "--key", signed) == ExitCode.USER
    assert "isobuild-rocky.manifest.json is missing" in error_line(capsys.readouterr().err)


def test_an_iso_changed_since_it_was_built_is_not_signed(project: Project, signed: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = (project.iso / "SHA256SUMS").read_bytes()
    with (project.iso / "debian" / "isobuild-debian.iso").open("r+b") as f:
        f.write(b"X")
    capsys.readouterr()
    assert project.run("release", "--key", signed) == ExitCode.CHECK_FAILED
    assert "isobuild-debian.iso does not match isobuild-debian.iso.sha256" in error_line(capsys.readouterr().err)
    assert (project.iso / "SHA256SUMS").read_bytes() == before


def test_verify_where_there_is_no_release(project: Project, keyring: Keyring, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert project.run("release", "verify", str(tmp_path)) == ExitCode.USER
    assert f"{tmp_path}/SHA256SUMS: not found" in error_line(capsys.readouterr().err)


def test_gpg_missing_is_an_infrastructure_error(project: Project, signed: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    capsys.readouterr()
    assert project.run("release", "--key", signed) == ExitCode.INFRA
    err = capsys.readouterr().err
    assert "gpg: command not found" in error_line(err) and "apt-get install gnupg" in err


def test_release_settings_are_validated(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.root / "isobuild.yaml").write_text("release:\n  kee: ABC\n")
    assert project.run("release") == ExitCode.USER
    assert "isobuild.yaml: release.kee: unknown key" in error_line(capsys.readouterr().err)


def test_repository_settings_document_the_release_section() -> None:
    from builder.infra import schema
    from builder.infra.config import Settings

    root = Path(__file__).resolve().parents[2]
    settings = schema.load_file(Settings, root / "isobuild.yaml")
    assert settings.release.key is None and settings.release.gnupg_home is None
    assert set(yaml.safe_load((root / "isobuild.yaml").read_text())["release"]) == {"key", "gnupg_home"}


def test_verify_with_a_key_gpg_does_not_know(project: Project, signed: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert project.run("release", "verify", "--key", "stranger@isobuild.invalid") == ExitCode.USER
    err = capsys.readouterr().err
    assert "signing key 'stranger@isobuild.invalid': no public key" in error_line(err) and "gpg --import" in err


def test_a_signature_by_a_key_gpg_does_not_have_fails(project: Project, signed: str, keyring: Keyring,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Verifying in a keyring without the release key: the signatures cannot be trusted, exit 4."""
    keyring.gen("unrelated <u@isobuild.invalid>")  # GNUPGHOME is now this keyring, not the signer's
    capsys.readouterr()
    assert project.run("release", "verify") == ExitCode.CHECK_FAILED
    line = error_line(capsys.readouterr().err)
    assert "SHA256SUMS: signed by key" in line and "which is not in" in line
