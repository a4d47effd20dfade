"""`edgepack serve` against the same bundle run in-process, and under concurrent clients.

    .venv/bin/python benchmarks/serve_bench.py BUNDLE [--tokens 64] [--repeats 5] [--concurrency 1 4]

The server runs in its own process (`edgepack serve --port 0`); this process holds the in-process
Generator. They take turns, never run at once. Every request is a greedy /v1/completions of the same
prompt with `--tokens` new tokens, streamed; the client times the first and the last event.

- overhead: decode tok/s through HTTP (client clock, first event to last) over the in-process
  Generator's decode tok/s, medians of `--repeats` alternating runs;
- concurrency C: C clients at once, `--repeats` rounds: throughput (all tokens over the round's
  wall time), time to first token and request latency (median and p95 over all requests);
- `--soak S`: requests back to back for S seconds, the server's resident memory (its /metrics)
  read every 30 s: first, last and highest.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time

PROMPT = "The history of the Raspberry Pi begins in 2006, when"


def stream(address: tuple[str, int], tokens: int) -> tuple[float, float, float, int]:
    """(time to first event, time to last event, whole request, events with text), client clock."""
    conn = http.client.HTTPConnection(*address, timeout=600)
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    first = last = None
    pieces = 0
    for line in r:
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["text"]:
                now = time.perf_counter()
                first, last, pieces = first or now, now, pieces + 1
    conn.close()
    end = time.perf_counter()
    return first - t0, last - t0, end - t0, pieces


def resident(address: tuple[str, int]) -> float:
    conn = http.client.HTTPConnection(*address, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return float(re.search(r"^edgepack_process_resident_bytes (\S+)$", text, re.M).group(1))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--soak", type=float, default=0, metavar="S", help="seconds of back-to-back requests")
    a = p.parse_args()

    from edgepack.runtime import Generator

    cmd = [sys.executable, "-m", "edgepack.cli", "serve", a.bundle, "--port", "0", "--max-queue", "64"]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        host, port = re.search(r"http://([\d.]+):(\d+)/v1", server.stderr.readline()).groups()
        if "ready" not in server.stderr.readline():
            raise SystemExit("the server did not load the bundle")
        threading.Thread(target=server.stderr.read, daemon=True).start()  # drain its request log
        address = (host, int(port))
        gen = Generator(a.bundle, threads=a.threads)
        ids = gen.encode(PROMPT)
        local, remote = [], []
        for _ in range(a.repeats):
            list(gen.generate_ids(ids, a.tokens))
            local.append(gen.last_run.decode_tok_s)
            first, last, _, pieces = stream(address, a.tokens)
            remote.append((pieces - 1) / (last - first))
        del gen
        name = a.bundle.rstrip("/").split("/")[-1]
        print(f"{name}: {a.tokens} greedy tokens, {a.repeats} runs each, medians (min-max)")
        print(f"  in-process decode   {statistics.median(local):7.1f} tok/s ({min(local):.1f}-{max(local):.1f})")
        print(f"  through the server  {statistics.median(remote):7.1f} tok/s ({min(remote):.1f}-{max(remote):.1f}), "
              f"{statistics.median(remote) / statistics.median(local):.3f}x in-process")
        for c in a.concurrency:
            throughput, ttft, latency = [], [], []
            for _ in range(a.repeats):
                results = [None] * c
                threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, stream(address, a.tokens)))
                           for i in range(c)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                throughput.append(sum(r[3] for r in results) / wall)
                ttft += [r[0] for r in results]
                latency += [r[2] for r in results]
            print(f"  concurrency {c}: {statistics.median(throughput):6.1f} tok/s in all, time to first token "
                  f"{statistics.median(ttft) * 1e3:.0f} ms (p95 {percentile(ttft, 0.95) * 1e3:.0f}), latency "
                  f"p50 {statistics.median(latency):.2f} s, p95 {percentile(latency, 0.95):.2f} s")
        if a.soak:
            rss, requests, t0, next_read = [], 0, time.perf_counter(), 0.0
            while (now := time.perf_counter() - t0) < a.soak:
                if now >= next_read:
                    rss.append(resident(address))
                    next_read += 30
                stream(address, a.tokens)
                requests += 1
            rss.append(resident(address))
            print(f"  soak: {requests} requests in {a.soak:.0f} s; server RSS {rss[0] / 2**20:.0f} MiB at the start, "
                  f"{rss[-1] / 2**20:.0f} MiB at the end, {max(rss) / 2**20:.0f} MiB at most ({len(rss)} readings)")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
