"""SSH to build VMs: the project's key and the client command lines.

The key is an ed25519 pair made on first use in a directory of the project's records
(``builder.stages.image.key_dir``), the private half 0600, no passphrase: it opens VMs on this
host's loopback only.  Guests make their host keys at first boot, so each VM's are learnt on
first contact into that VM's own known_hosts (``accept-new``): a changed key later is refused.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from builder.infra import runner
from builder.infra.errors import InfraError

KEY = "id_ed25519"
LOOPBACK = "127.0.0.1"


def private_key(key_dir: Path) -> Path:
    return key_dir / KEY


def public_key(key_dir: Path) -> str | None:
    """The public key's line, or None when no key was made yet."""
    path = key_dir / f"{KEY}.pub"
    return path.read_text().strip() if path.is_file() and private_key(key_dir).is_file() else None


def ensure_key(key_dir: Path, comment: str) -> str:
    """The project's key pair, made now when there is none; returns the public key's line."""
    existing = public_key(key_dir)
    if existing is not None:
        os.chmod(private_key(key_dir), 0o600)
        return existing
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = key_dir / f".{KEY}.{os.getpid()}.tmp"
    for stale in (tmp, tmp.with_name(tmp.name + ".pub")):
        stale.unlink(missing_ok=True)
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", tmp])
    os.chmod(tmp, 0o600)
    os.replace(tmp.with_name(tmp.name + ".pub"), key_dir / f"{KEY}.pub")
    os.replace(tmp, private_key(key_dir))
    text = public_key(key_dir)
    if text is None:
        raise InfraError(f"ssh-keygen made no key in {key_dir}")
    return text


def options(key: Path, known_hosts: Path, port: int, connect_timeout: int = 10) -> list[str]:
    """What every ssh/scp to a VM passes: our key only, no agent or password prompts, the VM's
    own known_hosts, the forwarded port on loopback."""
    return ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=8",
            "-F", "/dev/null"] + (["-p", str(port)] if port else [])


def remote_command(argv: list[str]) -> str:
    """``argv`` as the line sshd hands the guest's shell: each argument one word, and the shell
    outlives the command so that a command killed by signal N exits 128+N (ssh alone reports 255)."""
    return f"{shlex.join(argv)}; exit $?"


def ssh_argv(key: Path, known_hosts: Path, port: int, command: list[str] | None, tty: bool = False) -> list[str]:
    head = ["ssh", *options(key, known_hosts, port), *(["-t"] if tty else ["-T"]), f"root@{LOOPBACK}"]
    return head if command is None else [*head, "--", remote_command(command)]


def scp_argv(key: Path, known_hosts: Path, port: int, src: str, dest: str) -> list[str]:
    """scp (SFTP underneath) of a file or a tree; remote paths are ``root@127.0.0.1:PATH``."""
    return ["scp", "-r", "-p", "-q", *[o for o in options(key, known_hosts, 0)], "-P", str(port), src, dest]


def remote(path: str) -> str:
    return f"root@{LOOPBACK}:{path}"


# A guest clock further than this from the host's is set to the host's.
CLOCK_SLACK = 120.0


def sync_clock(key: Path, known_hosts: Path, port: int, log_path: Path | None = None) -> float | None:
    """The guest's clock set to the host's when they differ by more than CLOCK_SLACK seconds.

    A guest whose kernel reads no RTC (no driver for the board's clock, or QEMU user networking's
    lack of NTP) comes up at its userland's build time: apt then refuses a Release file "not valid
    yet" and every file a build writes gets a date months old.  Returns the skew seen (guest minus
    host, seconds), None when the guest did not say."""
    result = runner.run(ssh_argv(key, known_hosts, port, ["date", "-u", "+%s"]), log_path=log_path, check=False,
                        capture=True, timeout=60)
    words = result.output.split()
    if result.returncode != 0 or not words or not words[-1].isdigit():
        return None
    skew = int(words[-1]) - time.time()
    if abs(skew) > CLOCK_SLACK:
        runner.run(ssh_argv(key, known_hosts, port, ["date", "-u", "-s", f"@{int(time.time())}"]),
                   log_path=log_path, capture=True, timeout=60)
    return round(skew, 1)
