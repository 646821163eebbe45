"""Fake mp4 files that pass a quick look: a real ``ftyp`` box, then filler."""

from __future__ import annotations

import hashlib
import struct

_FTYP = struct.pack(">I4s4sI4s4s4s", 28, b"ftyp", b"isom", 0x200, b"isom", b"iso2", b"mp41")

EXPIRED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>\n"
)
NOT_FOUND_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>\n"
)


def fake_mp4(task_id: str, number: int, size: int) -> bytes:
    """``size`` bytes: an ``ftyp`` box, then a ``free`` box of filler unique to the video.

    Smaller sizes are a prefix of the same bytes, so even a tiny file starts like an mp4.
    """
    seed = hashlib.sha256(f"{task_id}/{number}".encode()).digest()
    rest = max(0, size - len(_FTYP))
    filler = (seed * (rest // len(seed) + 1))[: max(0, rest - 8)]
    free = struct.pack(">I4s", rest, b"free") + filler if rest >= 8 else b"\0" * rest
    return (_FTYP + free)[:size]
