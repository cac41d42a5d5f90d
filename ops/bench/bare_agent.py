"""A bare Faust agent that only consumes a topic: the baseline of the ingest benchmark.

python -m ops.bench.bare_agent TOPIC EXPECTED   (prints one JSON line, then exits)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from contracts.settings import Settings
from streaming.app import create_app
from streaming.worker import Worker


def main() -> None:
    topic_name, expected = sys.argv[1], int(sys.argv[2])
    settings = Settings.from_env()
    datadir = Path(tempfile.mkdtemp(prefix="twinstream-bare-"))
    app = create_app(settings, name=f"bare-{os.getpid()}", datadir=datadir)
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = {"count": 0, "first": 0.0, "last": 0.0}

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        async for batch in stream.take_events(2_000, within=0.1):
            if not seen["count"]:
                seen["first"] = time.time()
            seen["count"] += len(batch)
            seen["last"] = time.time()
            if seen["count"] >= expected:
                os.write(1, f"RESULT {json.dumps(seen)}\n".encode())  # faust redirects print
                shutil.rmtree(datadir, ignore_errors=True)
                os._exit(0)

    Worker(app, loglevel="error").execute_from_commandline()  # the same runner as ours


if __name__ == "__main__":
    main()
