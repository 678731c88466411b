"""The C read path of token streams (``proxy/_fast.c``), or its stand-in.

``pip install`` builds ``proxy._fast`` where a C compiler is at hand; without it (or with
a build older than this checkout, or with ``OLLAMA_PROXY_NO_C=1``) ``Stream`` is a Python
stand-in that never arms, and every read takes the Python path: the same bytes, at more
CPU per token. ``BUILT`` says which; ``serve`` logs a warning at start without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

_VERSION = 1  # proxy/_fast.c's VERSION this checkout expects

WHY_NOT = ""  # why the C path is not used ("" when it is)

if TYPE_CHECKING:
    from proxy._fast import Stream as Stream
    from proxy._fast import set_enabled as set_enabled
else:
    try:
        if os.environ.get("OLLAMA_PROXY_NO_C"):
            raise ImportError("OLLAMA_PROXY_NO_C is set")
        from proxy._fast import VERSION, Stream, set_enabled

        if VERSION != _VERSION:
            raise ImportError(f"proxy/_fast is built from older source (version {VERSION}, not {_VERSION}): pip install -e .")
    except ImportError as exc:
        WHY_NOT = str(exc)

        class Stream:
            """Stand-in: never armed, so every read goes to ``_data_received``."""

            armed = False
            relayed = 0

            def arm(self, *spec: object) -> bool:
                return False

            def disarm(self) -> None:
                pass

        def set_enabled(on: bool) -> bool:
            return False


BUILT = not WHY_NOT
