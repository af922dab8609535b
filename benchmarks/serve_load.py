"""Load on ``heedful serve`` at 127.0.0.1: throughput and latency with and without dynamic batching.

    python benchmarks/serve_load.py runs/dates                       # 2,000 requests per phase, concurrency 32
    python benchmarks/serve_load.py runs/dates --requests 200        # a quick look

For each phase (batching off, then on) the script starts ``heedful serve RUN`` in a subprocess on
127.0.0.1 (a free port; nothing else is reached), waits for /readyz, warms it up, then sends
``--requests`` requests, one text each (dates in several formats, seeded), ``--concurrency`` at a
time from one asyncio client, and measures each request's latency from send to answer. The two
phases run back to back in one invocation, so the ratio compares like with like on the machine as
it was then. Each phase stops after ``--phase-seconds`` (what was answered by then is reported).
Then the abuse cases, each checked to be a JSON 4xx, with a normal request after each.

Throughput = answered requests / wall time of the phase; p50/p95/p99 = latency percentiles; errors
= any non-200 answer or failed connection. With --json the figures are also written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["%d %B %Y", "%B %d, %Y", "%d.%m.%Y", "%Y/%m/%d", "%A, %d %B %Y", "%b %d %Y", "%d/%m/%y"]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    start = dt.date(1950, 1, 1).toordinal()
    return [dt.date.fromordinal(start + rng.randrange(40_000)).strftime(rng.choice(FORMATS)) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, batching: bool, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "heedful.cli", "serve", run, "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--max-wait-ms", str(args.max_wait_ms),
           "--max-batch-tokens", str(args.max_batch_tokens), "--batching" if batching else "--no-batching"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(client: httpx.AsyncClient, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the server was not ready in time")


class Connection:
    """One keep-alive HTTP/1.1 connection, as lean as a client can be: the load generator shares
    the machine with the server, so every millisecond it spends is one the server does not get."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n")  # fmt: skip
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load(client: httpx.AsyncClient, model: str, lines: list[str], concurrency: int, limit_s: float) -> dict:
    latencies: list[float] = []
    errors, first_error = 0, None
    queue = list(reversed(lines))
    deadline = time.monotonic() + limit_s

    async def worker() -> None:
        nonlocal errors, first_error
        connection = Connection(client.base_url.port)
        while queue and time.monotonic() < deadline:
            text = queue.pop()
            t0 = time.perf_counter()
            try:
                status, body = await connection.post_json(f"/v1/models/{model}/predict", {"texts": [text]})
                ok = status == 200 and json.loads(body)["predictions"][0]["input"] == text
                problem = f"{status} {body[:300]!r}"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
                connection.close()
            latencies.append(time.perf_counter() - t0)
            errors += not ok
            first_error = first_error or (None if ok else f"{text!r}: {problem}")
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    percentiles = {f"p{p}_ms": round(q[p - 1] * 1000, 1) for p in (50, 95, 99)}
    return {"requests": len(latencies), "errors": errors, "first_error": first_error, "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1), **percentiles}  # fmt: skip


ABUSE = [
    ("malformed JSON", {"content": b'{"texts": [', "headers": {"content-type": "application/json"}}),
    ("wrong content type", {"content": b'{"texts": ["x"]}', "headers": {"content-type": "text/plain"}}),
    ("oversize body", {"json": {"texts": ["x" * 1_100_000]}}),
    ("too many texts", {"json": {"texts": ["1 May 2000"] * 33}}),
    ("over-long text", {"json": {"texts": ["x" * 2_001]}}),
    ("wrong types", {"json": {"texts": [1, 2], "attention": "yes"}}),
]


async def abuse(client: httpx.AsyncClient, model: str) -> list[dict]:
    results = []
    cases = [(what, f"/v1/models/{model}/predict", kw) for what, kw in ABUSE]
    cases += [("unknown model", "/v1/models/nope/predict", {"json": {"texts": ["x"]}}),
              ("path-like model name", "/v1/models/..%2F..%2Fetc/predict", {"json": {"texts": ["x"]}})]  # fmt: skip
    for what, path, kw in cases:
        r = await client.post(path, **kw)
        body = r.json()
        after = await client.post(f"/v1/models/{model}/predict", json={"texts": ["1 May 2000"]})
        results.append({"case": what, "status": r.status_code, "error": body.get("error"),
                        "json_error": set(body) == {"error", "detail"},
                        "then_ok": after.status_code == 200})  # fmt: skip
    return results


async def phase(run: str, model: str, batching: bool, lines: list[str], args: argparse.Namespace) -> dict:
    port = free_port()
    server = start_server(run, port, batching, args)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                     limits=httpx.Limits(max_connections=args.concurrency + 4)) as client:  # fmt: skip
            await wait_ready(client, server)
            await load(client, model, texts(64, seed=1), args.concurrency, 60)  # warm-up
            result = await load(client, model, lines, args.concurrency, args.phase_seconds)
            if batching:
                result["abuse"] = await abuse(client, model)
            return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a translate run directory, e.g. runs/dates")
    parser.add_argument("--model", help="its run name (default: the run directory's name)")
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--phase-seconds", type=float, default=300, help="each phase stops after this")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    model = args.model or Path(args.run).name
    lines = texts(args.requests)
    results = {}
    for name, batching in (("one at a time", False), ("dynamic batching", True)):
        results[name] = asyncio.run(phase(args.run, model, batching, lines, args))
        r = results[name]
        if r["first_error"]:
            print(f"{name}: first error: {r['first_error']}")
        print(f"{name:>17}: {r['requests']} requests, {r['errors']} errors, {r['seconds']} s, "
              f"{r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
              f"p99 {r['p99_ms']} ms")  # fmt: skip
    ratio = results["dynamic batching"]["throughput_rps"] / results["one at a time"]["throughput_rps"]
    print(f"throughput ratio (batching / one at a time): {ratio:.2f}x")
    for case in results["dynamic batching"].pop("abuse"):
        ok = 400 <= case["status"] < 500 and case["json_error"] and case["then_ok"]
        print(f"  abuse {case['case']:<22} {case['status']} {case['error']!r:<28} served after: {case['then_ok']}"
              f"  {'ok' if ok else 'FAIL'}")  # fmt: skip
    if args.json:
        record = {"command": " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} CPUs", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "concurrency": args.concurrency, "ratio": round(ratio, 2), **results}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
