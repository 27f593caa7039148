"""Gateway relay benchmark: streamed tokens/s on one core, and added latency per token.

The gateway runs as its own process (``lorax-gateway serve --backend synthetic``), pinned to one
core with ``taskset``; the synthetic engine runs *inside* that process, so its cost is charged to
the gateway's core too (the numbers are conservative). Load comes from separate processes on other
cores speaking raw HTTP/1.1 over asyncio sockets (a Python HTTP client would be the bottleneck).

* throughput: the engine emits tokens instantly; N streams of M tokens each; tokens/s = all tokens
  received / wall time.
* latency: the engine stamps each token's text with ``time.monotonic_ns()`` when it emits it and
  paces tokens ``--token-delay-s`` apart; a client computes receive time − stamp per token (same
  host, same monotonic clock). That is the latency the gateway adds: JSON/SSE encoding, Litestar,
  uvicorn, the socket, and the event loop's queueing at that load.

Usage::

    python benchmarks/relay_bench.py --gateway-core 0 --client-cores 2,3,4,5 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

STAMP = re.compile(rb'"text":" (\d+)"')
ERRORS: list[str] = []  # error events seen by this load process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b"200" in s.recv(100):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def start_engine(core: int, port: int, token_delay_s: float) -> subprocess.Popen[bytes]:
    """A synthetic engine *process* (engine wire protocol) for the ``http`` backend runs."""
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "lorax_gateway.testing"]
    cmd += ["--port", str(port), "--stamp-tokens", "--max-total-tokens", "100000"]
    cmd += ["--token-delay-s", str(token_delay_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _wait_healthy(proc, port)


def start_gateway(
    core: int, port: int, token_delay_s: float, engine_url: str | None = None
) -> subprocess.Popen[bytes]:
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "lorax_gateway.cli", "serve"]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--log-level", "WARNING"]
    cmd += ["--max-concurrent-requests", "100000"]
    if engine_url is not None:
        cmd += ["--engine-url", engine_url]
    else:
        cmd += ["--backend", "synthetic", "--backend-option", "stamp_tokens=true"]
        cmd += ["--backend-option", f"token_delay_s={token_delay_s}"]
        cmd += ["--backend-option", "max_total_tokens=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _wait_healthy(proc, port)


async def one_stream(port: int, route: str, tokens: int, latencies: list[int] | None) -> int:
    if route == "generate_stream":
        body = json.dumps(
            {
                "inputs": "hello world",
                "parameters": {"max_new_tokens": tokens, "ignore_eos_token": True},
            }
        )
    else:
        body = json.dumps(
            {
                "model": "",
                "prompt": "hello world",
                "max_tokens": tokens,
                "ignore_eos_token": True,
                "stream": True,
            }
        )
    path = "/generate_stream" if route == "generate_stream" else "/v1/completions"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
    )
    await writer.drain()
    received = 0
    tail = b""
    first = True
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        if first:
            first = False
            if not chunk.startswith(b"HTTP/1.1 200"):
                ERRORS.append(chunk[:300].decode(errors="replace"))
        now = time.monotonic_ns()
        data = tail + chunk
        # Keep a partial event for the next read so a stamp split across reads is not lost.
        cut = data.rfind(b"\n\n")
        complete, tail = (data[: cut + 2], data[cut + 2 :]) if cut >= 0 else (b"", data)
        stamps = STAMP.findall(complete)
        if b'"error_type"' in complete:
            ERRORS.append(complete[complete.find(b'"error') - 20 :][:300].decode(errors="replace"))
        received += len(stamps)
        if latencies is not None:
            latencies.extend(now - int(s) for s in stamps)
    writer.close()
    return received


def client_proc(
    port: int, route: str, streams: int, tokens: int, measure: bool, queue: Any
) -> None:
    async def run() -> tuple[int, list[int]]:
        lat: list[int] = []
        counts = await asyncio.gather(
            *(one_stream(port, route, tokens, lat if measure else None) for _ in range(streams))
        )
        return sum(counts), lat

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    start = time.monotonic()
    total, lat = asyncio.run(run())
    queue.put((total, lat, start, time.monotonic(), ERRORS))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    port: int, route: str, cores: list[int], streams: int, tokens: int, measure: bool
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    per = [
        streams // len(cores) + (1 if i < streams % len(cores) else 0) for i in range(len(cores))
    ]
    procs = []
    start = time.monotonic()
    for core, n in zip(cores, per, strict=True):
        p = ctx.Process(target=client_proc, args=(port, route, n, tokens, measure, queue))
        p.start()
        os.sched_setaffinity(p.pid, {core})
        procs.append(p)
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[3] for r in results) - start
    total = sum(r[0] for r in results)
    errors = [e for r in results for e in r[4]]
    out: dict[str, Any] = {
        "streams": streams,
        "tokens_per_stream": tokens,
        "tokens": total,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(total / wall),
        "errors": len(errors),
        "error_samples": errors[:3],
    }
    if measure:
        lat = sorted(x for r in results for x in r[1])
        q = statistics.quantiles(lat, n=100)
        out.update(
            {
                "latency_ms_p50": round(q[49] / 1e6, 3),
                "latency_ms_p99": round(q[98] / 1e6, 3),
                "latency_ms_max": round(lat[-1] / 1e6, 3),
                "samples": len(lat),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gateway-core", type=int, default=0)
    ap.add_argument("--client-cores", default="1")
    ap.add_argument("--throughput-streams", type=int, default=500)
    ap.add_argument("--throughput-tokens", type=int, default=400)
    ap.add_argument("--latency-streams", type=int, default=500)
    ap.add_argument("--latency-tokens", type=int, default=200)
    ap.add_argument(
        "--token-delay-s", default="0.05,0.02", help="pacing of the latency runs (comma list)"
    )
    ap.add_argument("--routes", default="generate_stream,completions")
    ap.add_argument(
        "--engine-core",
        type=int,
        default=None,
        help="run the synthetic engine as its own process on this core (http backend)",
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    cores = [int(c) for c in args.client_cores.split(",")]
    report: dict[str, Any] = {
        "backend": "synthetic in-process" if args.engine_core is None else "http",
        "cpu": _cpu_name(),
        "python": sys.version.split()[0],
        "gateway_core": args.gateway_core,
        "client_cores": cores,
    }
    for route in args.routes.split(","):
        delays = [float(d) for d in args.token_delay_s.split(",")]
        for mode, delay in [("throughput", 0.0)] + [("latency", d) for d in delays]:
            port = free_port()
            engine = None
            engine_url = None
            if args.engine_core is not None:
                engine_port = free_port()
                engine = start_engine(args.engine_core, engine_port, delay)
                engine_url = f"http://127.0.0.1:{engine_port}"
            gw = start_gateway(args.gateway_core, port, delay, engine_url)
            try:
                # Warm-up: imports, first-request paths, JIT-free but caches and pools.
                run_load(port, route, cores[:1], 20, 20, False)
                cpu0 = cpu_seconds(gw.pid)
                if mode == "throughput":
                    res = run_load(
                        port, route, cores, args.throughput_streams, args.throughput_tokens, False
                    )
                else:
                    res = run_load(
                        port, route, cores, args.latency_streams, args.latency_tokens, True
                    )
                # CPU time of the gateway process: tokens per CPU-second is its per-core rate,
                # and stays meaningful when other processes compete for the core.
                cpu = cpu_seconds(gw.pid) - cpu0
                res["gateway_cpu_s"] = round(cpu, 3)
                res["tokens_per_gateway_cpu_s"] = round(res["tokens"] / cpu) if cpu else None
                if mode == "latency":
                    res["token_delay_s"] = delay
                    res["offered_tokens_per_s"] = round(args.latency_streams / delay)
            finally:
                gw.send_signal(signal.SIGTERM)
                gw.wait(timeout=30)
                if engine is not None:
                    engine.send_signal(signal.SIGTERM)
                    engine.wait(timeout=30)
            key = f"{route}/{mode}" + (f"@{delay}s" if mode == "latency" else "")
            report[key] = res
            print(key, json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
