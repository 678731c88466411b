"""Benchmark runner: client → {direct fake vLLM | proxy | nginx byte relay} → fake vLLM.

Per concurrency level the targets run interleaved, in a different order every round (each
permutation in turn), each run preceded by a short warm-up so pooled upstream connections are open.
Relay CPU comes from a cgroup of the relay's own (every thread and process, exited ones too; /proc
when no cgroup can be made) plus the interrupt time of the CPUs the relay is pinned to (loopback's
receive work for what the relay sent, which the kernel charges to no process). The proxy runs one
worker, like nginx, unless --proxy-arg=--workers says otherwise. Figures are medians over rounds with min–max; ratios and differences are
paired within a round. See bench/README.md.

    python bench/run.py --mode paced --streams 16,64,256,512 --rounds 5 --json bench/results.json
    python bench/run.py --smoke        # CI: exit 1 on a failed or truncated proxy stream at c=16 (burst),
                                       # or if no round reaches proxy/direct 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, procstat, relays, report

SMOKE_MIN_RATIO = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("paced", "burst"), default="paced")
    p.add_argument("--tick-ms", type=float, default=20.0, help="paced: step clock period (20 ms = 50 tok/s)")
    p.add_argument("--streams", default="1,16,64,256,512", help="comma-separated concurrency levels")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="tokens per stream (paced default 200; burst default --burst-events / c, min 200)",
    )
    p.add_argument("--burst-events", type=int, default=100_000, help="burst: total events per run")
    p.add_argument("--stagger-s", type=float, default=None, help="spread stream starts (paced default 1.0, burst 0)")
    p.add_argument("--targets", default="direct,proxy,nginx", help="subset of direct,proxy,nginx")
    p.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `python -m proxy serve` (repeat; use --proxy-arg=--workers)",
    )
    p.add_argument("--client-cpus", default="0", help="CPUs for fake vLLM and the load client")
    p.add_argument("--relay-cpus", default="1", help="CPUs for the relay under test (proxy, nginx)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument(
        "--rss-streams", type=int, default=200, help="idle streams for the RSS test (0 skips it and the disconnect check)"
    )
    p.add_argument(
        "--warmup-tokens",
        type=int,
        default=50,
        help="tokens per warm-up stream (paced: 50 = 1 s, so all c streams overlap and each relay ends it "
        "with c pooled upstream connections; 2 left the proxy ~100 short at 256); 0 = no warm-up",
    )
    p.add_argument("--json", type=Path, default=None, help="write raw samples and summary here")
    p.add_argument(
        "--smoke", action="store_true", help="CI profile: burst, c=16, 3 rounds, short streams; exit 1 on gross regression only"
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.mode, a.streams, a.rounds, a.rss_streams = "burst", "16", 3, 0
        a.targets = "direct,proxy"  # the gate is proxy/direct; nginx would only lengthen it
        a.tokens = a.tokens or 5000
    if a.stagger_s is None:
        a.stagger_s = 1.0 if a.mode == "paced" else 0.0
    return a


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }
    try:
        import uvloop

        info["uvloop"] = getattr(uvloop, "__version__", "?")
    except ImportError:
        info["uvloop"] = None
    exe = relays.nginx_path()
    if exe:
        r = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
        info["nginx"] = (r.stderr or r.stdout).strip()
    return info


class Bench:
    def __init__(self, a: argparse.Namespace, workdir: Path) -> None:
        self.a = a
        self.workdir = workdir
        pin = not a.no_pin and (os.cpu_count() or 1) >= 2
        self.client_cpus = a.client_cpus if pin else None
        self.relay_cpus = a.relay_cpus if pin else None
        self.relay_cpu_set = {int(c) for c in self.relay_cpus.split(",")} if self.relay_cpus else set()
        self.fake: relays.Proc | None = None
        self.relays: dict[str, relays.Proc] = {}
        self.targets: list[str] = []
        self.notes: list[str] = []

    # -- setup ---------------------------------------------------------------------------------------
    def start(self) -> None:
        a = self.a
        if self.client_cpus:
            os.sched_setaffinity(0, {int(c) for c in self.client_cpus.split(",")})
        tick = a.tick_ms if a.mode == "paced" else None
        self.fake = relays.start_fake(self.workdir, tick, self.client_cpus)
        wanted = [t.strip() for t in a.targets.split(",") if t.strip()]
        if "direct" in wanted:
            self.targets.append("direct")
        if "proxy" in wanted:
            try:
                self.relays["proxy"] = relays.start_proxy(
                    self.workdir, self.fake.port, self.relay_cpus, a.proxy_arg, limit=self.stream_limit()
                )
                self.targets.append("proxy")
            except (RuntimeError, OSError) as e:
                self.notes.append(f"proxy unavailable: {e}")
        if "nginx" in wanted:
            if relays.nginx_path() is None:
                self.notes.append("nginx not installed: no byte-relay baseline")
            else:
                try:
                    self.relays["nginx"] = relays.start_nginx(self.workdir, self.fake.port, self.relay_cpus)
                    self.targets.append("nginx")
                except (RuntimeError, OSError) as e:
                    self.notes.append(f"nginx unavailable: {e}")

    def stream_limit(self) -> int:
        """The proxy's ``max_concurrency``/``max_inflight``: above any stream count of the run
        (levels, the RSS test, the disconnect check), so no stream waits for a fair turn."""
        levels = [int(x) for x in self.a.streams.split(",") if x.strip()]
        return 2 * max([*levels, int(self.a.rss_streams), 64])

    def stop(self) -> None:
        for p in self.relays.values():
            p.stop()
        if self.fake is not None:
            self.fake.stop()

    # -- runs ----------------------------------------------------------------------------------------
    def port(self, target: str) -> int:
        assert self.fake is not None
        return self.fake.port if target == "direct" else self.relays[target].port

    @staticmethod
    def shape(target: str) -> str:
        return "ollama" if target == "proxy" else "openai"

    def tokens_for(self, c: int) -> int:
        a = self.a
        if a.tokens:
            return int(a.tokens)
        return 200 if a.mode == "paced" else max(200, a.burst_events // c)

    def timeout_for(self, tokens: int) -> float:
        a = self.a
        if a.mode == "paced":
            return float(30.0 + a.stagger_s + tokens * a.tick_ms / 1000 * 3)
        return 120.0

    async def wait_fake_idle(self, timeout: float) -> int:
        """Active upstream streams left after waiting up to `timeout` seconds."""
        assert self.fake is not None
        deadline = time.monotonic() + timeout
        while True:
            active = relays.fake_stats(self.fake.port)["active"]
            if active == 0 or time.monotonic() >= deadline:
                return active
            await asyncio.sleep(0.05)

    async def one_run(self, target: str, c: int, rnd: int) -> dict[str, Any]:
        a = self.a
        assert self.fake is not None
        port, shape = self.port(target), self.shape(target)
        if a.warmup_tokens > 0:  # 0: no warm-up, so a relay's pool starts empty (or with what an earlier run left)
            await load.run_load(relays.HOST, port, streams=c, tokens=a.warmup_tokens, shape=shape, timeout_s=30)
        leftover = await self.wait_fake_idle(5.0)
        relays.http_get(self.fake.port, "/bench/reset-peak")
        connections0 = relays.fake_stats(self.fake.port)["connections"]
        tokens = self.tokens_for(c)
        relay = self.relays.get(target)
        cpu0 = relay.cpu() if relay else None
        live0 = procstat.live_tasks_ns(relay.pid) if relay else 0
        irq0 = procstat.cpu_irq_ns(self.relay_cpu_set) if relay and self.relay_cpu_set else None
        fake0 = procstat.tree_cpu(self.fake.pid)
        t0 = time.monotonic_ns()
        res = await load.run_load(
            relays.HOST, port, streams=c, tokens=tokens, shape=shape, stagger_s=a.stagger_s, timeout_s=self.timeout_for(tokens)
        )
        wall_ns = time.monotonic_ns() - t0
        fake1 = procstat.tree_cpu(self.fake.pid)
        after = relays.fake_stats(self.fake.port)
        run: dict[str, Any] = {
            "target": target,
            "round": rnd,
            "c": c,
            "load": res,
            "wall_ns": wall_ns,
            "fake_cpu_ns": (fake1 - fake0).run_ns,
            "fake_idle_before": leftover == 0,
            "upstream_peak": after["peak_active"],  # streams open at the fake at once
            # new connections the fake accepted during the run (less the one that asked for its stats)
            "upstream_connects": after["connections"] - connections0 - 1,
            "loadavg_1m": os.getloadavg()[0],
        }
        if relay is not None and cpu0 is not None:
            d = relay.cpu() - cpu0
            live = procstat.live_tasks_ns(relay.pid) - live0
            irq = procstat.cpu_irq_ns(self.relay_cpu_set) - irq0 if irq0 is not None else 0
            run.update(
                cpu_ns=d.run_ns + irq,
                process_ns=d.run_ns,
                irq_ns=irq,
                live_tasks_ns=live,  # the former accounting (threads alive at both samples), for comparison
                user_ns=int(d.user_s * 1e9),
                sys_ns=int(d.sys_s * 1e9),
                cpu_util=round(d.run_ns / wall_ns, 3),
                relay_alive=relay.alive(),
            )
        return run

    async def level(self, c: int) -> dict[str, Any]:
        runs = []
        orders = list(itertools.permutations(self.targets))
        for rnd in range(self.a.rounds):
            for target in orders[rnd % len(orders)]:  # no target always runs first, or after another
                if target != "direct" and not self.relays[target].alive():
                    continue
                run = await self.one_run(target, c, rnd)
                runs.append(run)
                ld = run["load"]
                print(
                    f"  c={c:<4} round {rnd + 1}/{self.a.rounds} {target:<6} {ld['events_per_s']:>10,.0f} ev/s"
                    f"  ttft p50 {ld['ttft_p50_ms']} ms  delay p99 {ld['delay_p99_ms']} ms"
                    f"  failed {ld['failed']} short {ld['short']}  peak upstream {run['upstream_peak']} new conns {run['upstream_connects']}"
                    + (f"  cpu {run['cpu_ns'] / 1000 / max(ld['events'], 1):.1f} µs/ev" if "cpu_ns" in run else ""),
                    flush=True,
                )
        return {"tokens": self.tokens_for(c), "runs": runs, "summary": report.summarize_level(runs)}

    async def rss(self, target: str, m: int) -> dict[str, Any]:
        """RSS per idle open stream: M streams that stall upstream after the role chunk."""
        assert self.fake is not None
        relay = self.relays[target]
        port, shape = relay.port, self.shape(target)
        await load.run_load(relays.HOST, port, streams=16, tokens=self.a.warmup_tokens, shape=shape, timeout_s=30)
        await self.wait_fake_idle(5.0)
        await asyncio.sleep(0.5)
        before = procstat.tree_rss_kib(relay.pid)
        held = load.HeldStreams()
        try:
            await held.open(relays.HOST, port, m, shape, stall=True)
            deadline = time.monotonic() + 20
            while relays.fake_stats(self.fake.port)["active"] < m and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            opened = relays.fake_stats(self.fake.port)["active"]
            await asyncio.sleep(1.0)
            during = procstat.tree_rss_kib(relay.pid)
        finally:
            held.close()
        left = await self.wait_fake_idle(5.0)
        await asyncio.sleep(0.5)
        after = procstat.tree_rss_kib(relay.pid)
        errors = sorted({r.error for r in held.results if r.error and r.error != "closed by client"})
        return {
            "streams": m,
            "streams_open_upstream": opened,
            "rss_before_kib": before,
            "rss_during_kib": during,
            "rss_after_kib": after,
            "kib_per_stream": (during - before) / max(opened, 1),
            "upstream_left_open": left,
            "client_errors": errors[:5],
        }

    async def disconnect_check(self, target: str, n: int = 64) -> dict[str, Any]:
        """Clients hang up mid-stream; every upstream stream must be closed soon after."""
        assert self.fake is not None
        before = relays.fake_stats(self.fake.port)
        task = asyncio.create_task(
            load.run_load(relays.HOST, self.port(target), streams=n, tokens=100_000, shape=self.shape(target), timeout_s=30)
        )
        await asyncio.sleep(1.0)
        mid = relays.fake_stats(self.fake.port)["active"]
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        left = await self.wait_fake_idle(5.0)
        after = relays.fake_stats(self.fake.port)
        return {
            "streams": n,
            "active_upstream_mid": mid,
            "upstream_left_open_after_5s": left,
            "upstream_aborted": after["aborted"] - before["aborted"],
        }


async def main_async(a: argparse.Namespace) -> int:
    levels_c = [int(x) for x in a.streams.split(",") if x.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="ollama-vllm-bench-"))
    bench = Bench(a, workdir)
    out: dict[str, Any] = {
        "meta": {
            "args": {k: str(v) for k, v in vars(a).items()},
            "host": host_info(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    }
    levels: dict[int, dict[str, Any]] = {}
    try:
        bench.start()
        out["meta"]["targets"] = bench.targets
        out["meta"]["pinning"] = {"client_and_fake": bench.client_cpus, "relay": bench.relay_cpus}
        for name, proc in bench.relays.items():
            out["meta"][f"{name}_processes"] = len(procstat.descendants(proc.pid))
            out["meta"][f"{name}_cpu_accounting"] = proc.accounting
        if "proxy" in bench.relays:
            out["meta"]["proxy_cmd"] = bench.relays["proxy"].extra.get("cmd")
        for n in bench.notes:
            print(f"NOTE: {n.splitlines()[0]}", flush=True)
        print(
            f"mode={a.mode}"
            + (f" tick={a.tick_ms}ms" if a.mode == "paced" else "")
            + f" rounds={a.rounds} stagger={a.stagger_s}s targets={','.join(bench.targets)}"
            f" pin client+fake={bench.client_cpus} relay={bench.relay_cpus}"
            + "".join(f" {n}_processes={out['meta'][n + '_processes']}" for n in bench.relays)
            + "".join(f" {n}_cpu={out['meta'][n + '_cpu_accounting']}" for n in bench.relays)
            + (f"+irq(cpu {bench.relay_cpus})" if bench.relay_cpus else "")
            + f" loadavg={' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        if a.rss_streams > 0:
            out["rss"] = {}
            for t in ("proxy", "nginx"):
                if t in bench.relays:
                    try:
                        out["rss"][t] = await bench.rss(t, a.rss_streams)
                    except (OSError, RuntimeError) as e:
                        out["rss"][t] = {"error": repr(e)}
        if a.rss_streams > 0:
            out["disconnect"] = {t: await bench.disconnect_check(t) for t in bench.relays}
            for t, d in out["disconnect"].items():
                print(f"disconnect check {t}: {d}", flush=True)
        for c in levels_c:
            levels[c] = await bench.level(c)
            out["levels"] = levels
    finally:
        bench.stop()
        out["meta"]["notes"] = bench.notes
        if bench.fake is not None:
            out["meta"]["fake_log_summary"] = bench.fake.log_summary()
        for name, p in bench.relays.items():
            if p.popen.returncode not in (0, -15):  # died or failed to stop cleanly: keep the evidence
                out["meta"][f"{name}_log_tail"] = p.log_tail(40)
            out["meta"][f"{name}_log_summary"] = p.log_summary()
            out["meta"][f"{name}_exit"] = p.popen.returncode
        if a.json:
            a.json.write_text(json.dumps(out, indent=1, default=str))
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"== {a.mode} mode"
        + (f", tick {a.tick_ms} ms" if a.mode == "paced" else "")
        + f", {a.rounds} rounds; figures are median [min–max] over rounds =="
    )
    print(report.render(levels, bench.targets, latency=a.mode == "paced"))
    print(f"machine: {os.cpu_count()} CPUs, load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if out.get("rss"):
        print("\nRSS per idle open stream (upstream stalled after the role chunk):")
        print(report.render_rss(out["rss"]))
    for name in bench.relays:
        ls = out["meta"].get(f"{name}_log_summary") or {}
        bad = {k: v for k, v in ls.get("by_level", {}).items() if k in ("warning", "warn", "error", "critical")}
        if bad or ls.get("tracebacks"):
            print(f"\n{name} log: {bad} tracebacks={ls.get('tracebacks')}; e.g.")
            for line in ls.get("samples", [])[:3]:
                print(f"  {line[:200]}")
    for n in bench.notes:
        print(f"NOTE: {n}")
    if a.json:
        print(f"\nraw samples and summary: {a.json}")
    if a.smoke:
        return smoke_verdict(levels, bench.targets)
    return 0


def smoke_verdict(levels: dict[int, dict[str, Any]], targets: list[str]) -> int:
    """Exit status of ``--smoke``: 1 if the proxy did not start, if any proxied stream failed
    (connect error, non-200, an error line, a timeout) or was truncated (fewer content events
    than asked for, or no final ``done: true`` line), or if no round reached proxy/direct
    throughput ``SMOKE_MIN_RATIO``; else 0."""
    if "proxy" not in targets:
        print("SMOKE FAIL: proxy did not start")
        return 1
    level = levels.get(16, {})
    runs = [r for r in level.get("runs", []) if r["target"] == "proxy"]
    streams = sum(r["load"]["streams"] for r in runs)
    failed = sum(r["load"]["failed"] for r in runs)
    short = sum(r["load"]["short"] for r in runs)
    if not runs or failed or short:
        errors: dict[str, int] = {}
        for r in runs:
            for k, v in r["load"].get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        print(f"SMOKE FAIL: proxy streams at c=16: {failed} failed, {short} truncated of {streams}; errors {errors}")
        return 1
    # Gate on the best round: a real regression shows in every round, a noisy neighbour in some.
    s = level.get("summary", {}).get("proxy", {}).get("ratio_vs_direct")
    if s is None or s["max"] < SMOKE_MIN_RATIO:
        print(f"SMOKE FAIL: burst throughput proxy/direct at c=16: best round {s and round(s['max'], 2)} < {SMOKE_MIN_RATIO}")
        return 1
    print(
        f"SMOKE OK: burst throughput proxy/direct at c=16: best round {s['max']:.2f}, median {s['median']:.2f}"
        f" (gate: best round ≥ {SMOKE_MIN_RATIO}); {streams} proxied streams, none failed or truncated"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    raise_nofile()
    load.install_uvloop()
    try:
        return asyncio.run(main_async(a))
    except RuntimeError as e:
        print(f"bench setup failed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
