"""The end-to-end serving benchmark (issue #9): engine process + gateway process + lorax-bench.

    python3 benchmarks/gpu/e2e.py --out DIR [--phase saturation|latency] [--lora-dtype auto|fp8]
        [--tiny] [-- LORAX_BENCH_ARGS...]

Starts ``serve_random.py`` (``lorax-engine serve`` on a random-weight Llama-3-8B shape made on the
GPU, with adapter ids ``bench/a{i}`` linked to 16 weight directories, all preloaded into the CPU
tier), then ``lorax-gateway serve`` with the ``http`` backend in front of it, waits for both
``/health``, runs the phase's lorax-bench sweep against the gateway, and stops both servers.

The issue's sweep is two phases, each one call that fits the GPU machine's 10-minute limit with
the engine's start-up (``PHASES``): ``saturation`` (rate inf for the base model and N = 1, 8, 64,
512, 2000) and ``latency`` (N = 64 and 2000: rate inf, then 50 % and 80 % of the request rate
that point reached, through lorax-bench's ``0.5x``/``0.8x`` rates).

What a timed window contains: every id is in the CPU tier before the first request (one packed
copy per distinct file; ``--preload``), and ``--warmup`` requests ran before the sweep (CUDA
graphs, allocator, the gateway's connections); so each point measures steady state, where every
GPU slot miss is a real host-to-GPU copy and no request waits for a disk read.

Everything lands in ``--out``: ``sweep.json`` (results), ``sweep.png`` (the plot),
``engine.log``, ``gateway.log``, ``bench.log``. Arguments after ``--`` replace the phase's sweep;
``--url``, ``--output`` and ``--plot`` are always set here. At the end the servers' warnings and
errors are counted and the first few printed (a failed request's cause is there, not in
lorax-bench's error class). Exit status: lorax-bench's, or 1 when a server did not come up.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
SERVE_RANDOM = ROOT / "packages/lorax-engine/benchmarks/serve_random.py"

# Every point: one trace of S-LoRA's uniform [8, 512] lengths, 256 requests, at most 128 in
# flight, sending for at most 40 s (a 50 % point would otherwise take twice the saturation time).
COMMON = [
    "--adapter-template", "bench/a{i}",
    "--num-requests", "256",
    "--max-concurrency", "128",
    "--warmup", "32",
    "--duration", "40",
    "--request-timeout", "90",
]  # fmt: skip
PHASES = {
    # Saturation throughput per N, the base model as the ceiling (about 5 minutes on an H200).
    "saturation": ["--num-adapters", "base,1,8,64,512,2000", "--rate", "inf", *COMMON],
    # TTFT/TPOT at 50 % and 80 % of each N's measured saturation (about 6 minutes).
    "latency": ["--num-adapters", "64,2000", "--rate", "inf,0.5x,0.8x", *COMMON],
}
# The server log lines worth reading after a run.
TROUBLE = re.compile(rb" (WARNING|ERROR|CRITICAL) |Traceback")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200, the process exits, or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def start(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the servers drain), then SIGKILL if it is still there after 20 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def report_trouble(log: Path, show: int = 5) -> None:
    """Count the warning/error lines of a server log and print the first ``show``."""
    lines = [line for line in log.read_bytes().splitlines() if TROUBLE.search(line)]
    print(f"e2e: {log.name}: {len(lines)} warning/error lines", flush=True)
    for line in lines[:show]:
        print("   ", line.decode(errors="replace")[:300], flush=True)


def main() -> int:
    argv = sys.argv[1:]
    sweep: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, sweep = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=sorted(PHASES), default="saturation")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/lorax-e2e")))
    ap.add_argument("--engine-port", type=int, default=8081)
    ap.add_argument("--gateway-port", type=int, default=8080)
    ap.add_argument("--startup-timeout", type=float, default=240.0)
    ap.add_argument(
        "--model-dir", type=Path, default=None, help="serve_random.py --dir (tokenizer, adapters)"
    )
    ap.add_argument(
        "--lora-dtype",
        choices=["auto", "fp8"],
        default="auto",
        help="the engine's slot tables: the model dtype, or float8 e4m3 (half the adapter bytes)",
    )
    ap.add_argument("--tiny", action="store_true", help="small model on the CPU (script check)")
    args = ap.parse_args(argv)
    sweep = PHASES[args.phase] if sweep is None else sweep
    args.out.mkdir(parents=True, exist_ok=True)
    engine_url = f"http://127.0.0.1:{args.engine_port}"
    gateway_url = f"http://127.0.0.1:{args.gateway_port}"
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    with (
        open(args.out / "engine.log", "wb") as engine_log,
        open(args.out / "gateway.log", "wb") as gateway_log,
    ):
        try:
            t = time.monotonic()
            engine_cmd = [py, str(SERVE_RANDOM), "--port", str(args.engine_port), "--preload"]
            engine_cmd += ["--lora-dtype", args.lora_dtype]
            engine_cmd += ["--tiny", "--ids", "64", "--distinct", "2"] if args.tiny else []
            engine_cmd += ["--dir", str(args.model_dir)] if args.model_dir else []
            procs.append(start(engine_cmd, engine_log))
            if not wait_healthy(f"{engine_url}/health", procs[-1], args.startup_timeout):
                print("e2e: the engine did not come up (engine.log)", file=sys.stderr)
                return 1
            print(f"e2e: engine up after {time.monotonic() - t:.1f} s", flush=True)
            gateway_cmd = [py, "-m", "lorax_gateway.cli", "serve", "--host", "127.0.0.1"]
            gateway_cmd += ["--port", str(args.gateway_port), "--engine-url", engine_url]
            gateway_cmd += ["--max-concurrent-requests", "1024"]
            procs.append(start(gateway_cmd, gateway_log))
            if not wait_healthy(f"{gateway_url}/health", procs[-1], 60):
                print("e2e: the gateway did not come up (gateway.log)", file=sys.stderr)
                return 1
            bench_cmd = [py, "-m", "lorax.bench.cli", *sweep, "--url", gateway_url]
            bench_cmd += ["--output", str(args.out / "sweep.json"), "--plot"]
            bench_cmd += [str(args.out / "sweep.png"), "--no-progress"]
            print("e2e:", " ".join(bench_cmd[1:]), flush=True)
            with open(args.out / "bench.log", "wb") as bench_log:
                bench = subprocess.Popen(
                    bench_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
                )
                assert bench.stdout is not None
                try:
                    for line in bench.stdout:
                        sys.stdout.buffer.write(line)
                        sys.stdout.flush()
                        bench_log.write(line)
                except KeyboardInterrupt:
                    # run.sh's time limit interrupts the whole group: lorax-bench writes the
                    # points it finished before the servers go away.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # one interrupt is enough
                    print("e2e: interrupted, waiting for lorax-bench's results", flush=True)
                    bench_log.write(bench.communicate(timeout=30)[0])
                return bench.wait()
        finally:
            for proc in reversed(procs):
                stop(proc)
            for log in (args.out / "engine.log", args.out / "gateway.log"):
                report_trouble(log)


if __name__ == "__main__":
    sys.exit(main())
