"""A Debian archive in a directory, signed with a throwaway key: what aptrepo reads, offline.

``Mirror.add_deb`` / ``add_source`` put files in the pool and list them in the
suite's Packages / Sources indexes; ``publish`` writes Release, signs it into
InRelease with the test key and returns the ``file://`` URI.  ``keyring`` is the
exported public key (``gpg --export``), what gpgv checks against.
"""

from __future__ import annotations

import atexit
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stop_agent(env: dict[str, str]) -> None:
    """gpg leaves an agent (and its sockets) behind per GNUPGHOME: end it."""
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)


@dataclass
class Mirror:
    root: Path
    gnupg: Path
    keyring: Path
    suites: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # suite -> index path -> stanzas

    @classmethod
    def create(cls, root: Path) -> Mirror:
        # a short GNUPGHOME: gpg-agent's sockets live in it, and a socket path over 107 bytes (a deep
        # pytest directory) makes key generation fail with exit 2; removed when the tests end
        gnupg = Path(tempfile.mkdtemp(prefix="ib-gpg-"))
        atexit.register(shutil.rmtree, gnupg, True)
        env = {**os.environ, "GNUPGHOME": str(gnupg)}
        subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                        "isobuild test archive <archive@test.invalid>", "ed25519", "sign", "never"],
                       env=env, check=True, capture_output=True)
        keyring = root.parent / f"{root.name}-keyring.gpg"
        keyring.parent.mkdir(parents=True, exist_ok=True)
        keyring.write_bytes(subprocess.run(["gpg", "--batch", "--export"], env=env, check=True,
                                           capture_output=True).stdout)
        _stop_agent(env)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, gnupg, keyring)

    @property
    def uri(self) -> str:
        return f"file://{self.root}"

    def _index(self, suite: str, path: str) -> list[str]:
        return self.suites.setdefault(suite, {}).setdefault(path, [])

    def add_deb(self, suite: str, arch: str, name: str, version: str, data: bytes,
                component: str = "main") -> Path:
        pool = self.root / "pool" / component / name[0] / name
        pool.mkdir(parents=True, exist_ok=True)
        filename = f"{name}_{version}_{arch}.deb"
        (pool / filename).write_bytes(data)
        rel = (pool / filename).relative_to(self.root)
        self._index(suite, f"{component}/binary-{arch}/Packages").append(
            f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nFilename: {rel}\n"
            f"Size: {len(data)}\nSHA256: {_sha(data)}\n")
        return pool / filename

    def add_source(self, suite: str, name: str, version: str, files: dict[str, bytes],
                   component: str = "main") -> Path:
        pool = self.root / "pool" / component / name[0] / name
        pool.mkdir(parents=True, exist_ok=True)
        lines = []
        for fname, data in files.items():
            (pool / fname).write_bytes(data)
            lines.append(f" {_sha(data)} {len(data)} {fname}")
        self._index(suite, f"{component}/source/Sources").append(
            f"Package: {name}\nVersion: {version}\nDirectory: {pool.relative_to(self.root)}\n"
            "Checksums-Sha256:\n" + "\n".join(lines) + "\n")
        return pool

    def publish(self, suite: str, architectures: str = "amd64 arm64", components: str = "main",
                date: str = "Sat, 01 Jun 2024 10:00:00 UTC") -> str:
        dists = self.root / "dists" / suite
        dists.mkdir(parents=True, exist_ok=True)
        sums = []
        for path, stanzas in sorted(self.suites.get(suite, {}).items()):
            raw = "\n".join(stanzas).encode()
            packed = lzma.compress(raw)
            for name, data in ((path, raw), (path + ".xz", packed)):
                (dists / name).parent.mkdir(parents=True, exist_ok=True)
                (dists / name).write_bytes(data)
                sums.append(f" {_sha(data)} {len(data)} {name}")
        release = (f"Origin: isobuild-test\nSuite: {suite}\nCodename: {suite}\nDate: {date}\n"
                   f"Architectures: {architectures}\nComponents: {components}\nSHA256:\n" + "\n".join(sums) + "\n")
        (dists / "Release").write_text(release)
        env = {**os.environ, "GNUPGHOME": str(self.gnupg)}
        (dists / "InRelease").unlink(missing_ok=True)
        subprocess.run(["gpg", "--batch", "--quiet", "--yes", "--clearsign", "--output", str(dists / "InRelease"),
                        str(dists / "Release")], env=env, check=True, capture_output=True)
        _stop_agent(env)
        return self.uri
