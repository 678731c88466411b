"""Start and stop the processes under test: fake vLLM, the proxy, an nginx byte relay."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procstat import CpuGroup, CpuSample, tree_cpu

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def pin_prefix(cpus: str | None) -> list[str]:
    """`taskset -c CPUS` when pinning is wanted and possible; children inherit the mask."""
    if not cpus or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)
    group: CpuGroup | None = None  # its own cgroup: CPU of every thread and process it ever ran

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> CpuSample:
        """Cumulative CPU: from its cgroup when it has one, else from /proc (tree_cpu)."""
        if self.group is not None:
            try:
                return self.group.sample()
            except (OSError, ValueError, KeyError):
                pass
        return tree_cpu(self.pid)

    @property
    def accounting(self) -> str:
        return f"cgroup {self.group.version}" if self.group is not None else "/proc"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        # Workers the process forked live in its own session (start_new_session); end any left behind.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.group is not None:
            self.group.remove()

    def log_summary(self, samples: int = 5) -> dict[str, Any]:
        """Counts of warning/error lines (JSON `level` field or plain text) and a few distinct samples."""
        by_level: dict[str, int] = {}
        seen: list[str] = []
        lines = tracebacks = 0
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return {}
        all_lines = text.splitlines()
        traces: list[str] = []
        for i, line in enumerate(all_lines):
            lines += 1
            if line.startswith("Traceback"):
                tracebacks += 1
                if len(traces) < 2:
                    end = next((j for j in range(i + 1, len(all_lines)) if not all_lines[j].startswith(" ")), i)
                    traces.append("\n".join(all_lines[max(i - 1, 0) : end + 1])[-4000:])
            level = ""
            if line.startswith("{"):
                try:
                    level = str(json.loads(line).get("level", "")).lower()
                except ValueError:
                    pass
            else:
                word = line.split(" ", 1)[0].rstrip(":").lower()
                level = word if word in ("critical", "error", "warning", "warn") else ""
            if level:
                by_level[level] = by_level.get(level, 0) + 1
            if level in ("warning", "warn", "error", "critical") and len(seen) < samples:
                key = line[:300]
                if key not in seen:
                    seen.append(key)
        return {"lines": lines, "by_level": by_level, "tracebacks": tracebacks, "samples": seen, "traces": traces}

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _spawn(name: str, cmd: list[str], port: int, workdir: Path, cwd: Path | None = None, account: bool = False) -> Proc:
    """Start ``cmd``; with ``account`` in a cgroup of its own when one can be made."""
    log = workdir / f"{name}.log"
    group = CpuGroup.make(f"ollama-vllm-bench-{name}") if account else None
    with open(log, "wb") as fh:
        popen = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=group.preexec if group is not None else None,  # noqa: PLW1509 - writes one file, then exec
        )
    return Proc(name, popen, port, log, group=group)


def _wait(proc: Proc, ok: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            proc.stop()  # removes its cgroup too
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            if ok():
                return
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = repr(e)
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s ({last}):\n{proc.log_tail()}")


def start_fake(
    workdir: Path, tick_ms: float | None, cpus: str | None, name: str = "fake_vllm", stall_max_s: float = 60.0
) -> Proc:
    port = free_port()
    mode = ["--tick-ms", str(tick_ms)] if tick_ms else ["--burst"]
    cmd = [
        *pin_prefix(cpus),
        sys.executable,
        str(BENCH_DIR / "fake_vllm.py"),
        "--port",
        str(port),
        *mode,
        "--stall-max-s",
        str(stall_max_s),
    ]
    proc = _spawn(name, cmd, port, workdir)
    _wait(proc, lambda: http_get(port, "/health")[0] == 200, 15)
    return proc


def fake_stats(port: int) -> dict[str, int]:
    status, body = http_get(port, "/bench/stats")
    if status != 200:
        raise RuntimeError(f"fake stats: HTTP {status}")
    stats: dict[str, int] = json.loads(body)
    return stats


def proxy_help_works(timeout: float = 20.0) -> bool:
    try:
        r = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--help"], cwd=REPO_ROOT, timeout=timeout, capture_output=True, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


PROXY_CONF = """\
# written by bench/relays.py: every stream of a run reaches the fake at once, so the run
# measures the relay, not the fair-turn queue (max_concurrency) or the 503 cap (max_inflight)
max_inflight: {limit}
backends:
  - url: http://{host}:{backend}
    max_concurrency: {limit}
"""


def start_proxy(
    workdir: Path, backend_port: int, cpus: str | None, extra_args: list[str], limit: int = 4096, timeout: float = 30.0
) -> Proc:
    """The proxy with one worker, as nginx runs one (compared 1:1), unless ``extra_args`` set ``--workers``;
    its config (unless ``extra_args`` give ``--config``) lets ``limit`` streams run on the backend at once."""
    port = free_port()
    if not any(a == "--workers" or a.startswith("--workers=") for a in extra_args):
        extra_args = ["--workers", "1", *extra_args]
    if any(a == "--config" or a.startswith("--config=") for a in extra_args):
        upstream = ["--backend", f"http://{HOST}:{backend_port}"]
    else:
        conf = workdir / "proxy.yaml"
        conf.write_text(PROXY_CONF.format(limit=limit, host=HOST, backend=backend_port))
        upstream = ["--config", str(conf)]
    cmd = [
        *pin_prefix(cpus),
        sys.executable,
        "-m",
        "proxy",
        "serve",
        *upstream,
        "--listen",
        f"{HOST}:{port}",
        *extra_args,
    ]
    proc = _spawn("proxy", cmd, port, workdir, cwd=REPO_ROOT, account=True)
    proc.extra["cmd"] = cmd

    def ready() -> bool:
        status, body = http_get(port, "/api/tags")
        if status != 200:
            return False
        names = {m.get("name") for m in json.loads(body).get("models", [])}
        return bool(names & {"bench", "bench:latest"})

    _wait(proc, ready, timeout)
    return proc


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream fake {{
        server {host}:{backend};
        keepalive 1024;
        keepalive_requests 100000;
        keepalive_timeout 120s;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def nginx_path() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


def start_nginx(workdir: Path, backend_port: int, cpus: str | None) -> Proc:
    exe = nginx_path()
    if exe is None:
        raise RuntimeError("nginx not installed")
    port = free_port()
    d = workdir / "nginx"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, host=HOST, backend=backend_port, port=port))
    cmd = [*pin_prefix(cpus), exe, "-p", str(d), "-c", str(conf), "-e", str(d / "nginx-error.log")]
    proc = _spawn("nginx", cmd, port, workdir, account=True)
    _wait(proc, lambda: http_get(port, "/health")[0] == 200, 15)
    return proc
