"""The unit tier starts no process: a test that needs a real tool belongs in tests/orchestration."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class _NoProcess(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the unit tier runs no subprocess (it ran {args!r}); move the test to "
                             "tests/orchestration")


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess, "Popen", _NoProcess)
    yield
