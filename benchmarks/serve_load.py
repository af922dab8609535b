"""Load on ``heedful serve`` at 127.0.0.1: throughput and latency with and without dynamic batching.

    python benchmarks/serve_load.py runs/dates                       # 2,000 requests per phase, concurrency 32
    python benchmarks/serve_load.py runs/dates --requests 200        # a quick look
    python benchmarks/serve_load.py runs/dates runs/amazon-reviews   # + a mixed stream to both models

For each phase (batching off, then on) the script starts ``heedful serve RUN …`` in a subprocess on
127.0.0.1 (a free port; nothing else is reached), waits for /readyz, warms it up, then sends
``--requests`` requests, one text each, ``--concurrency`` at a time from one asyncio client, and
measures each request's latency from send to answer. The phases run back to back in one
invocation, so the ratio compares like with like on the machine as it was then. Each phase stops
after ``--phase-seconds`` (what was answered by then is reported). Then the abuse cases, each
checked to be a JSON 4xx, with a normal request after each.

The texts follow each run's task (its config.yaml's ``task``): dates in several formats for a
translate run (the dates model), short synthetic product reviews for a classify run, seeded. With
one run: its two phases. With several: first the first run alone (the headline ratio, as with
one), then a mixed stream served by one server holding every run, request i going to a model
drawn at random (seeded, equal odds), reported per model and overall, batching off and on.

Throughput = answered requests / wall time of the phase (per model: that model's answered
requests over the same wall time); p50/p95/p99 = latency percentiles; errors = any non-200 answer
or failed connection. With --json the figures are also written as JSON.
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


REVIEW = (["the", "this", "my"], ["battery", "sound", "screen", "case", "cable", "charger", "seller", "box"],
          ["is", "was", "seems"], ["excellent", "great", "fine", "okay", "poor", "terrible", "broken", "cheap"],
          ["", "and arrived late", "for the price", "after a week", "as described", "but the box broke"])  # fmt: skip


def texts(n: int, seed: int = 0) -> list[str]:
    """Dates in several formats: the dates model's inputs."""
    rng = random.Random(seed)
    start = dt.date(1950, 1, 1).toordinal()
    return [dt.date.fromordinal(start + rng.randrange(40_000)).strftime(rng.choice(FORMATS)) for _ in range(n)]


def reviews(n: int, seed: int = 0) -> list[str]:
    """Short product reviews of one or two clauses: a review classifier's inputs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        clauses = [" ".join(w for w in (rng.choice(part) for part in REVIEW) if w) for _ in range(rng.randint(1, 2))]
        out.append(". ".join(c[0].upper() + c[1:] for c in clauses) + ".")
    return out


TEXTS = {"translate": texts, "classify": reviews}


def run_info(run: str) -> tuple[str, str]:
    """(model name, task) from a run directory's config.yaml: what the server names it."""
    import yaml

    cfg = yaml.safe_load((Path(run) / "config.yaml").read_text(encoding="utf-8"))
    if cfg["task"] not in TEXTS:
        raise SystemExit(f"{run}: task {cfg['task']!r}; this benchmark makes texts for {', '.join(TEXTS)}")
    return str(cfg["name"]), cfg["task"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[str], port: int, batching: bool, args: argparse.Namespace) -> subprocess.Popen:
    # The server starts in this checkout (cwd=ROOT): run directories as the caller named them, made absolute.
    runs = [str(Path(r).resolve()) for r in runs]
    cmd = [sys.executable, "-m", "heedful.cli", "serve", *runs, "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--max-wait-ms", str(args.max_wait_ms),
           "--max-batch-tokens", str(args.max_batch_tokens)] + ([] if batching else ["--no-batching"])  # fmt: skip
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


def summary(latencies: list[float], errors: int, wall: float) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    percentiles = {f"p{p}_ms": round(q[p - 1] * 1000, 1) for p in (50, 95, 99)}
    return {"requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1) if wall else 0.0, **percentiles}  # fmt: skip


async def load(client: httpx.AsyncClient, stream: list[tuple[str, str]], concurrency: int, limit_s: float) -> dict:
    """Send ``stream`` ((model, text) pairs, in order) ``concurrency`` at a time; the overall
    figures, and with more than one model ``per_model``."""
    latencies: dict[str, list[float]] = {model: [] for model, _ in stream}
    failed = dict.fromkeys(latencies, 0)
    errors, first_error = 0, None
    queue = list(reversed(stream))
    deadline = time.monotonic() + limit_s

    async def worker() -> None:
        nonlocal errors, first_error
        connection = Connection(client.base_url.port)
        while queue and time.monotonic() < deadline:
            model, text = queue.pop()
            t0 = time.perf_counter()
            try:
                status, body = await connection.post_json(f"/v1/models/{model}/predict", {"texts": [text]})
                ok = status == 200 and json.loads(body)["predictions"][0]["input"] == text
                problem = f"{status} {body[:300]!r}"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
                connection.close()
            latencies[model].append(time.perf_counter() - t0)
            errors += not ok
            failed[model] += not ok
            first_error = first_error or (None if ok else f"{model} {text!r}: {problem}")
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    result = {**summary([x for v in latencies.values() for x in v], errors, wall), "first_error": first_error}
    if len(latencies) > 1:
        result["per_model"] = {m: summary(v, failed[m], wall) for m, v in latencies.items()}
    return result


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


def mixed_stream(models: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """n (model, text) pairs, each model drawn at random (seeded), its texts in its task's kind."""
    rng = random.Random(seed)
    picks = [rng.randrange(len(models)) for _ in range(n)]
    pools = {i: iter(TEXTS[task](picks.count(i), seed=seed + i)) for i, (_, task) in enumerate(models)}
    return [(models[i][0], next(pools[i])) for i in picks]


async def phase(runs: list[str], batching: bool, stream: list[tuple[str, str]], args: argparse.Namespace,
                check_abuse: bool) -> dict:  # fmt: skip
    port, models = free_port(), [run_info(r) for r in runs]
    server = start_server(runs, port, batching, args)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                     limits=httpx.Limits(max_connections=args.concurrency + 4)) as client:  # fmt: skip
            await wait_ready(client, server)
            await load(client, mixed_stream(models, 64, seed=1_000), args.concurrency, 60)  # warm-up
            result = await load(client, stream, args.concurrency, args.phase_seconds)
            if check_abuse:
                result["abuse"] = await abuse(client, models[0][0])
            return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directories: a translate run first (e.g. runs/dates), then any translate or "
                             "classify runs to mix in (e.g. runs/amazon-reviews)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--phase-seconds", type=float, default=300, help="each phase stops after this")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    first = run_info(args.runs[0])
    results: dict = {}
    plans = [("", args.runs[:1], [(first[0], t) for t in TEXTS[first[1]](args.requests)])]
    if len(args.runs) > 1:
        plans.append(("mixed, ", args.runs, mixed_stream([run_info(r) for r in args.runs], args.requests, seed=0)))
    for prefix, runs, stream in plans:
        for mode, batching in (("one at a time", False), ("dynamic batching", True)):
            name = prefix + mode
            results[name] = r = asyncio.run(phase(runs, batching, stream, args, check_abuse=name == "dynamic batching"))
            if r["first_error"]:
                print(f"{name}: first error: {r['first_error']}")
            print(f"{name:>25}: {line(r)}")
            for model, m in r.get("per_model", {}).items():
                print(f"{'':>27}{model}: {line(m)}")
    ratio = results["dynamic batching"]["throughput_rps"] / results["one at a time"]["throughput_rps"]
    print(f"throughput ratio, {first[0]} alone (batching / one at a time): {ratio:.2f}x")
    mixed_ratio = None
    if len(args.runs) > 1:
        mixed_ratio = (
            results["mixed, dynamic batching"]["throughput_rps"] / results["mixed, one at a time"]["throughput_rps"]
        )
        print(f"throughput ratio, mixed (batching / one at a time): {mixed_ratio:.2f}x")
    for case in results["dynamic batching"].pop("abuse"):
        ok = 400 <= case["status"] < 500 and case["json_error"] and case["then_ok"]
        print(f"  abuse {case['case']:<22} {case['status']} {case['error']!r:<28} served after: {case['then_ok']}"
              f"  {'ok' if ok else 'FAIL'}")  # fmt: skip
    if args.json:
        record = {"command": " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} CPUs", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  "concurrency": args.concurrency, "ratio": round(ratio, 2),
                  "mixed_ratio": round(mixed_ratio, 2) if mixed_ratio else None, **results}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2) + "\n")


def line(r: dict) -> str:
    return (f"{r['requests']} requests, {r['errors']} errors, {r['seconds']} s, {r['throughput_rps']} req/s, "
            f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
