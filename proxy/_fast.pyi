# The C module proxy/_fast.c (built by `pip install`; proxy/native.py falls back without it).
from collections.abc import Callable

VERSION: int

def set_enabled(on: bool, /) -> bool: ...

class Stream:
    _last: float
    @property
    def relayed(self) -> int: ...
    @property
    def armed(self) -> bool: ...
    def data_received(self, data: bytes, /) -> None: ...
    def arm(
        self,
        time: Callable[[], float],
        write: Callable[[bytes], object],
        is_closing: Callable[[], bool],
        get_write_buffer_size: Callable[[], int],
        high: int,
        on_backlog: Callable[[], object],
        created_at: Callable[[], str],
        prefix: bytes,
        suffix: bytes,
        parts: tuple[bytes, bytes, bytes, bytes],
        model_json: bytes,
        chunked: bool,
        /,
    ) -> bool: ...
    def disarm(self) -> None: ...
