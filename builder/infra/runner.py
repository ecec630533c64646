"""The one way isobuild runs an external command.

Every command is an argv list (never a shell string).  Its combined output
goes to a log file, prefixed by a line that re-runs it by hand; the caller
may watch lines as they arrive (progress) and gets the output back when it
asks.  On failure the error carries the log path, the lines that look like
errors (not the 10,000 lines of make around them) and the reproducer.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.infra import hosttools, log
from builder.infra.errors import InfraError, IsobuildError

# Lines worth showing when a command fails: compiler and make errors, patch
# rejects, kconfig complaints.  Everything else stays in the log.
_ERROR_LINE = re.compile(
    r"(: (fatal )?error:|\berror: |^ERROR:|\*\*\* |undefined reference|Error \d+|"
    r"FAILED|can't find file|No such file or directory|No space left on device|"
    r"Traceback|not found)",
)
_DISK_FULL = "No space left on device"
_MAX_ERROR_LINES = 40
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when isobuild dies, however it dies (SIGKILL included)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# Commands that manage namespaces of their own and must start in the host's (mmdebstrap's unshare
# mode calls the set-user-ID newuidmap, which a user namespace would defang).
_OWN_NAMESPACES = frozenset({"unshare", "mmdebstrap"})


@functools.cache
def _contain_prefix() -> tuple[str, ...]:
    """How every command gets a PID namespace of its own: a killed isobuild kills its ``unshare``
    (PR_SET_PDEATHSIG), ``--kill-child`` then kills the namespace's first process, and with it the
    kernel kills every process in the namespace -- make's compilers, dpkg-buildpackage's whole
    tree, QEMU.  An ordinary user gets it inside a user namespace mapping only itself.  Where the
    host allows neither (a container without CAP_SYS_ADMIN), commands run as they are, with the
    parent-death signal alone; ``ISOBUILD_PIDNS=0`` asks for that too."""
    if os.environ.get("ISOBUILD_PIDNS") == "0" or shutil.which("unshare") is None:
        return ()
    prefix = ("unshare", *(() if os.geteuid() == 0 else ("--map-current-user",)), "--pid", "--fork", "--kill-child")
    try:
        probe = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                               check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if probe.returncode != 0:
        log.get().warning("runner.no-pid-namespace", why=probe.stderr.decode(errors="replace").strip()[:200])
        return ()
    return prefix


def contained(args: list[str]) -> list[str]:
    """``args`` as the runner starts them (in a PID namespace of their own where the host allows)."""
    if Path(args[0]).name in _OWN_NAMESPACES:
        return args
    return [*_contain_prefix(), *args]


class CommandFailed(InfraError):
    """A command exited non-zero (or timed out).  Callers that know the cause
    is the user's input (a compile error from a patch) re-raise as UserError."""

    def __init__(self, argv: Sequence[str], returncode: int, log_path: Path | None,
                 error_lines: list[str], tail: list[str], reproducer: str, timed_out: bool = False):
        what = "timed out" if timed_out else f"exited {returncode}"
        super().__init__(f"{Path(argv[0]).name} {what}", hint=f"re-run by hand: {reproducer}")
        self.argv = list(argv)
        self.returncode = returncode
        self.log_path = log_path
        self.error_lines = error_lines
        self.tail = tail
        self.reproducer = reproducer
        self.timed_out = timed_out
        self.details = (error_lines or tail)[-_MAX_ERROR_LINES:]
        if log_path is not None:
            self.details.append(f"full log: {log_path}")


@dataclass
class Result:
    argv: list[str]
    returncode: int
    seconds: float
    output: str
    stopped: bool = False  # on_line asked to end the command
    timed_out: bool = False


def reproducer(argv: Sequence[str], cwd: Path | None, env: Mapping[str, str] | None) -> str:
    parts = []
    if cwd is not None:
        parts.append(f"cd {shlex.quote(str(cwd))} &&")
    if env:
        parts.append("env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())))
    parts.append(shlex.join(argv))
    return " ".join(parts)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    capture: bool = False,
    on_line: Callable[[str], bool | None] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    display: Sequence[str] | None = None,
    daemon: bool = False,
) -> Result:
    """Run ``argv``; see the module docstring.  ``env`` holds overrides only.

    ``daemon``: the command daemonizes itself (QEMU ``-daemonize`` for a build VM) and its
    daemon must outlive isobuild -- the one kind of process isobuild leaves running on purpose:
    it starts outside the PID namespace and without the parent-death signal, and the call
    returns when the foreground process exits (once the daemon is set up).

    ``on_line`` sees each output line; returning True ends the command there
    (its process group is killed) -- how a boot check stops QEMU once it has
    a verdict.  ``Result.stopped`` then says so and the exit code is ignored.
    ``display`` is how a wrapped command (one run in namespaces) is named in
    messages; the reproducer is always the full ``argv``.
    """
    args = [str(a) for a in argv]
    shown = [str(a) for a in display] if display else args
    full_env = dict(os.environ)
    full_env["LC_ALL"] = "C.UTF-8"
    full_env.update(env or {})
    repro = reproducer(args, cwd, env)
    logger = log.get()
    logger.debug("run", argv=args, cwd=str(cwd) if cwd else None, log=str(log_path) if log_path else None)

    sink = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sink = log_path.open("a", encoding="utf-8", errors="replace")
        sink.write(f"$ {repro}\n")
        sink.flush()

    captured: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=30)
    error_lines: list[str] = []
    disk_full = False
    stopped = False
    timed_out = threading.Event()
    start = time.monotonic()
    try:
        try:
            if shutil.which(args[0], path=full_env.get("PATH")) is None:
                raise FileNotFoundError(args[0])
            proc = subprocess.Popen(
                args if daemon else contained(args), cwd=cwd, env=full_env, stdin=stdin, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=None if daemon else _die_with_parent,
            )
        except FileNotFoundError:
            if cwd is not None and not cwd.is_dir():
                raise InfraError(f"{cwd}: working directory of {Path(shown[0]).name} is gone") from None
            raise InfraError(f"{args[0]}: command not found", hint=hosttools.install_hint(args[0])) from None

        def kill() -> None:
            timed_out.set()
            _kill_group(proc)

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if sink:
                    sink.write(line + "\n")
                if capture or sink is None:
                    captured.append(line)
                tail.append(line)
                if _ERROR_LINE.search(line) and len(error_lines) < 4 * _MAX_ERROR_LINES:
                    error_lines.append(line)
                if _DISK_FULL in line:
                    disk_full = True
                if on_line and on_line(line):
                    stopped = True
                    _kill_group(proc)
                    break
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if timer:
                timer.cancel()
    finally:
        seconds = time.monotonic() - start
        if sink:
            sink.write(f"[exit {proc.returncode if 'proc' in locals() else '-'} after {seconds:.1f} s]\n")
            sink.close()

    rc = proc.returncode
    logger.debug("run.done", argv0=args[0], returncode=rc, seconds=round(seconds, 3))
    if disk_full and rc != 0:
        raise InfraError(f"disk full while running {Path(shown[0]).name}",
                         hint="free space in the work dir (isobuild clean) and re-run",
                         details=[f"full log: {log_path}"] if log_path else None)
    if check and not stopped and (rc != 0 or timed_out.is_set()):
        raise CommandFailed(shown, rc, log_path, error_lines, list(tail), repro, timed_out.is_set())
    return Result(args, rc, seconds, "\n".join(captured), stopped, timed_out.is_set())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        # SIGTERM first: make removes a half-written target, QEMU closes its images.  A command
        # with no handler that is its PID namespace's first process ignores it; SIGKILL follows.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)  # reaped: whoever asks next sees it gone, with its exit status
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def attached(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None) -> int:
    """Run a command on this terminal -- stdin, stdout and stderr inherited, not logged (an SSH
    session into a VM, its output streamed as it comes) -- and return its exit code.  It dies
    with isobuild (parent-death signal); Ctrl-C reaches it as on any terminal."""
    args = [str(a) for a in argv]
    full_env = dict(os.environ)
    full_env.update(env or {})
    if shutil.which(args[0], path=full_env.get("PATH")) is None:
        raise InfraError(f"{args[0]}: command not found", hint=hosttools.install_hint(args[0]))
    log.get().debug("run", argv=args, attached=True)
    proc = subprocess.Popen(args, env=full_env, preexec_fn=_die_with_parent)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def in_child(func: Callable[[], None], argv: Sequence[str], log_path: Path) -> None:
    """Run our own ``func`` in a forked child, logged like a command.

    For work that must pin process-wide state (the clock, the RNG) without it
    leaking into this process, at the cost of a fork (a millisecond) instead of
    starting an interpreter.  ``argv`` is how to do the same by hand; the
    child's output goes to ``log_path``; a failure raises CommandFailed with the
    lines that look like errors.
    """
    args = [str(a) for a in argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as sink:
        sink.write(f"$ {shlex.join(args)}  # forked, not exec'd\n")
        start_offset = sink.tell()
    log.get().debug("run", argv=args, forked=True, log=str(log_path))
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child never returns into the caller's stack
        code = 1
        try:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = stream = open(fd, "w", buffering=1)  # noqa: SIM115 (exits below)
            try:
                func()
                code = 0
            except BaseException:
                traceback.print_exc(file=stream)
            stream.flush()
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    rc = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    with log_path.open("a") as sink:
        sink.write(f"[exit {rc} after {seconds:.1f} s]\n")
    if rc != 0:
        with log_path.open("rb") as f:
            f.seek(start_offset)
            lines = f.read().decode(errors="replace").splitlines()
        if any(_DISK_FULL in line for line in lines):
            raise InfraError(f"disk full while running {Path(args[0]).name}",
                             hint="free space in the work dir (isobuild clean) and re-run",
                             details=[f"full log: {log_path}"])
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        raise CommandFailed(args, rc, log_path, errors, lines[-30:], shlex.join(args))


class Spawned:
    """A command running in the background while isobuild does other work (a package build's QEMU,
    a loopback distccd): contained like every command (its own PID namespace, the parent-death
    signal), its output appended to a log.  ``stop()`` ends it and everything it started; only the
    first call of several (its owner's, Ctrl-C's from another thread) does anything, so the owner
    may remove the log's tree once its own call returns."""

    def __init__(self, argv: list[str], proc: subprocess.Popen[bytes], log_path: Path, started: float):
        self.argv = argv
        self.proc = proc
        self.log_path = log_path
        self.started = started
        self._stopping = threading.Lock()
        self._stopped = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        with self._stopping:
            if not self._stopped:
                _kill_group(self.proc)
                self._stopped = True
                # the process is gone whatever this note meets (a full disk): stopping the others goes on
                with contextlib.suppress(OSError), self.log_path.open("a") as sink:
                    sink.write(f"[stopped: exit {self.proc.poll()} after {time.monotonic() - self.started:.1f} s]\n")
        return self.proc.poll()


def spawn(argv: Sequence[str | os.PathLike[str]], *, log_path: Path, cwd: Path | None = None,
          env: Mapping[str, str] | None = None) -> Spawned:
    """Start ``argv`` in the background (see ``Spawned``); the caller stops it however its work
    ends (Ctrl-C included)."""
    args = [str(a) for a in argv]
    full_env = dict(os.environ)
    full_env["LC_ALL"] = "C.UTF-8"
    full_env.update(env or {})
    if shutil.which(args[0], path=full_env.get("PATH")) is None:
        raise InfraError(f"{args[0]}: command not found", hint=hosttools.install_hint(args[0]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as sink:
        sink.write(f"$ {reproducer(args, cwd, env)}  # in the background\n")
        sink.flush()
        log.get().debug("spawn", argv=args, log=str(log_path))
        proc = subprocess.Popen(contained(args), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    return Spawned(args, proc, log_path, time.monotonic())


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run a short query command and return its stdout+stderr text."""
    return run(argv, capture=True, **kwargs).output  # type: ignore[arg-type]


__all__ = ["CommandFailed", "IsobuildError", "Result", "Spawned", "attached", "in_child", "output", "reproducer", "run",
           "spawn"]
