"""Who may decide what workers serve: an HMAC-SHA256 over every manifest, announcement and delta.

The key comes from the environment (``TWINSTREAM_MODEL_HMAC_KEY``, :class:`contracts.settings.
Settings`). The trainer signs with it; every worker that has a key checks it and refuses (reason
``signature``) what is unsigned or signed with another key. Each kind of message is signed under
its own context string, so a signature of one kind never passes as another's.

A deployment **without a key** gets no authenticity: anyone who can write to ``model-updates``
can send deltas the workers apply, and anyone who can write into a worker's snapshot folder can
put weights there. What still holds without a key: snapshots are read only from the worker's own
folder (an announcement names a version, never a path), never through a symlink or from a special
file, every read bounded in size and time, every file checked against the manifest's sha256.

>>> signer = Signer(b"secret")
>>> mac = signer.sign("manifest", b"{}")
>>> signer.verify("manifest", b"{}", mac), signer.verify("delta", b"{}", mac)
(True, False)
>>> Signer(None).verify("manifest", b"{}", None)  # no key: nothing to check
True
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

Context = Literal["manifest", "announcement", "delta"]


class Signer:
    """Signs and checks under one key; with ``key=None`` signs nothing and accepts everything."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key or None

    @classmethod
    def of(cls, key: str | None) -> Signer:
        """From the settings' key (text; empty or None: no key)."""
        return cls(key.encode() if key else None)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def sign(self, context: Context, data: bytes) -> str | None:
        """Hex HMAC-SHA256 of ``data`` under ``context``; None without a key."""
        if self._key is None:
            return None
        return hmac.new(self._key, _framed(context, data), hashlib.sha256).hexdigest()

    def verify(self, context: Context, data: bytes, mac: object) -> bool:
        """True when ``mac`` signs ``data`` under ``context`` (always, without a key)."""
        if self._key is None:
            return True
        expected = self.sign(context, data)
        return isinstance(mac, str) and expected is not None and hmac.compare_digest(mac, expected)


def _framed(context: str, data: bytes) -> bytes:
    return b"twinstream/" + context.encode() + b"\0" + data
