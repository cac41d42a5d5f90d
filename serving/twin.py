"""The serving model's twin: an off-duty copy of its weights that deltas are written into.

A worker following deltas (:mod:`serving.delta_follow`) writes each one into the twin, swaps the
twin in under the scorer's lock and brings the retired copy up to date, which becomes the next
twin (left-right). Copying a 4M-row model takes seconds (6-8 s beside a training trainer), so
after a checkpoint is loaded the copy is made on a thread of its own (:meth:`TwinKeeper.start`):
deltas that arrive meanwhile are written in place under the lock (requests wait for each, about
10 ms at that size) and remembered, and once the copy is done they are written into it again, in
order. That also mends rows the copy read while a delta was writing them: every tensor written
during the copy is written again, whole or row by row, by the deltas replayed.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from serving.delta import PreparedDelta, apply_prepared
from serving.priority import full_priority

log = logging.getLogger(__name__)


@dataclass
class _Copying:
    """A twin being copied on its thread, and the deltas written in place meanwhile."""

    model: Any
    thread: threading.Thread | None = None
    copy: Any = None  # set by the thread when done
    missed: list[PreparedDelta] = field(default_factory=list)


class TwinKeeper:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._pair: tuple[Any, Any] | None = None  # (serving model, its twin)
        self._copying: _Copying | None = None

    def of(self, model: Any) -> Any:
        """``model``'s twin, made now when there is none (waiting for a copy under way);
        None without twins."""
        if not self.enabled:
            return None
        copying = self._copying
        if copying is not None and copying.model is model and copying.thread is not None:
            copying.thread.join()
            self._finish(copying)
        if self._pair is None or self._pair[0] is not model:
            self.forget()  # the old pair's memory goes first
            self._pair = (model, self.copy_of(model))
        return self._pair[1]

    def start(self, model: Any) -> None:
        """Copy ``model`` on a thread of its own (after a checkpoint load: deltas need not wait
        for the copy)."""
        if not self.enabled or (self._pair is not None and self._pair[0] is model):
            return
        if self._copying is not None and self._copying.model is model:
            return
        self.forget()
        copying = _Copying(model)
        copying.thread = threading.Thread(
            target=self._copy_into, args=(copying,), name="delta-twin", daemon=True
        )
        self._copying = copying
        copying.thread.start()

    def for_delta(self, model: Any) -> Any:
        """The twin to write the next delta into; None while one is being copied (write the
        delta in place, then call :meth:`wrote_in_place`) or without twins."""
        copying = self._copying
        if copying is not None and copying.model is model and _running(copying.thread):
            return None
        return self.of(model)

    def wrote_in_place(self, model: Any, prepared: PreparedDelta) -> None:
        copying = self._copying
        if copying is not None and copying.model is model:
            copying.missed.append(prepared)

    def swapped(self, serving: Any, retired: Any) -> None:
        """``serving`` (the twin a delta was written into) now serves; ``retired``, brought up
        to date, is its twin."""
        self._pair = (serving, retired)

    def forget(self) -> None:
        """Drop the twin (a checkpoint was swapped in) and any copy under way."""
        self._pair, self._copying = None, None

    def copy_of(self, model: Any) -> Any:
        """A copy of every tensor of ``model`` (id maps are read-only here: shared)."""
        began, version = time.perf_counter(), model.version  # deltas may follow meanwhile
        mapper = getattr(model, "mapper", None)
        with full_priority():  # copies that release the GIL; at niceness 10 beside a busy
            # trainer the copy of 2 GiB took 11.9 s instead of 5-7
            twin = copy.deepcopy(model, {id(mapper): mapper})
        log.info("twin of v%d made in %.1f s", version, time.perf_counter() - began)
        return twin

    def _copy_into(self, copying: _Copying) -> None:
        try:
            copying.copy = self.copy_of(copying.model)
        except Exception:  # out of memory, most likely: the next delta copies again, in line
            log.exception("copying the twin of v%d", copying.model.version)

    def _finish(self, copying: _Copying) -> None:
        """Replay the deltas written in place during the copy into it; it becomes the twin."""
        self._copying = None
        if copying.copy is None:
            return
        for prepared in copying.missed:
            apply_prepared(copying.copy, prepared)
        self._pair = (copying.model, copying.copy)
        if copying.missed:
            log.info("twin: %d deltas written in place meanwhile, replayed", len(copying.missed))


def _running(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()
