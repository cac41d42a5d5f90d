"""The real public logs under ../shared/data, and a generated stand-in when they are absent.

``shared_file`` skips a test that only means something on the real data. ``taobao_users_log``
serves the tests of a guarantee (ingest correctness, recovery after ``kill -9``, scoring during
reloads, trainer resume) on a fresh clone too: the real ``taobao_users`` sample when it is
there, else a Taobao-format log that ``streaming.synthetic`` generates with the same shape (157
users, about 14,000 behaviours, some 15 sessions of some 6 behaviours per user). Setting
``TWINSTREAM_TEST_DATA=generated`` uses the generated log even where the real one exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from streaming.synthetic import GeneratorConfig, generate

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TEST_DATA_ENV = "TWINSTREAM_TEST_DATA"
TAOBAO_USERS = ("taobao_users", "UserBehavior.csv")
TAOBAO_USERS_ROWS = 14_316  # ../shared/data/README.md
STAND_IN = GeneratorConfig(users=157, long_users=0, seed=0)  # taobao_users' shape


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (tests read ../shared/data)")
    return path


@dataclass(frozen=True)
class BehaviourLog:
    """A Taobao-format log file: where it is, whether it is ``real`` or ``generated`` (and
    why), and how many rows it holds."""

    path: Path
    source: str
    rows: int
    reason: str


def taobao_users_source() -> tuple[str, str]:
    """Which ``taobao_users`` log the tests will read, ``real`` or ``generated``, and why."""
    path = SHARED_DATA.joinpath(*TAOBAO_USERS)
    choice = os.environ.get(TEST_DATA_ENV, "auto")
    if choice not in ("auto", "generated"):
        raise ValueError(f"{TEST_DATA_ENV}={choice!r}: use 'generated' or leave it unset")
    if choice == "generated":
        return "generated", f"{TEST_DATA_ENV}=generated"
    if not path.exists():
        return "generated", f"real data not available: {path} is absent"
    return "real", f"{path} is present"


def taobao_users_log(stand_in: Path) -> BehaviourLog:
    """The real ``taobao_users`` log, or a generated one written to ``stand_in``."""
    source, reason = taobao_users_source()
    if source == "real":
        return BehaviourLog(SHARED_DATA.joinpath(*TAOBAO_USERS), source, TAOBAO_USERS_ROWS, reason)
    log = generate(STAND_IN)
    log.write(stand_in)
    return BehaviourLog(stand_in, source, len(log.ts), reason)
