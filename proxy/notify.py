"""systemd's readiness protocol (sd_notify(3)): one ``AF_UNIX``/``SOCK_DGRAM`` datagram of
``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names a socket
in the abstract namespace. Without ``$NOTIFY_SOCKET`` (not run by systemd ``Type=notify``)
every call does nothing.

The watchdog interval comes from ``$WATCHDOG_USEC``; as libsystemd's
``sd_watchdog_enabled`` does, it applies only when ``$WATCHDOG_PID`` is unset or names this
process. Sending never raises: a lost datagram must not take the service down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, address: str = "", watchdog_usec: int = 0) -> None:
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec  # 0: no watchdog
        self._socket: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *lines: str) -> bool:
        """One datagram; False when there is no socket or it could not be sent."""
        if not self._address:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str = "reloading the configuration") -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tell this reload from an
        # earlier one; older versions ignore it.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                         *_status(status))  # fmt: skip

    def stopping(self, status: str = "draining") -> bool:
        return self.send("STOPPING=1", *_status(status))

    def status(self, status: str) -> bool:
        return self.send(*_status(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str) -> tuple[str, ...]:
    return (f"STATUS={text.replace(chr(10), ' ')}",) if text else ()
