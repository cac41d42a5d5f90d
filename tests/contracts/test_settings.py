"""Settings from the environment: each field from ``TWINSTREAM_<NAME>``, typed, refused when
its value is not one of its type's."""

from __future__ import annotations

import pytest

from contracts.settings import Settings


@pytest.mark.parametrize(("raw", "value"), [("0", False), ("off", False), ("YES", True)])
def test_a_yes_no_setting_reads_the_usual_spellings(raw: str, value: bool) -> None:
    assert Settings.from_env({"TWINSTREAM_DELTA_TWIN": raw}).delta_twin is value


def test_a_yes_no_setting_refuses_anything_else_and_numbers_are_typed() -> None:
    with pytest.raises(ValueError, match="yes/no"):
        Settings.from_env({"TWINSTREAM_DELTA_TWIN": "maybe"})
    env = {"TWINSTREAM_DELTA_CHUNK_BYTES": "1024", "TWINSTREAM_MODEL_READ_TIMEOUT_S": "2.5"}
    settings = Settings.from_env(env)
    assert (settings.delta_chunk_bytes, settings.model_read_timeout_s) == (1024, 2.5)
    assert Settings.from_env({}).delta_twin is True
