"""A worker's gauges that sample nothing, for agent tests that need no lag or size readings."""

from __future__ import annotations


class NoGauges:
    async def sample(self) -> None:
        return None
