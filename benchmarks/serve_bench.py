"""`edgepack serve` against the same bundle run in-process, and under concurrent clients.

    .venv/bin/python benchmarks/serve_bench.py BUNDLE [--tokens 64] [--repeats 5] [--concurrency 1 4]
        [--llama-server GGUF] [--soak S]

The server runs in its own process (`edgepack serve --port 0`); this process holds the in-process
Generator. They take turns, never run at once. Every request is a greedy /v1/completions of the same
prompt with `--tokens` new tokens, streamed; the client times the first and the last event.

- overhead: decode tok/s through HTTP (client clock, first event to last) over the in-process
  Generator's decode tok/s, medians of `--repeats` alternating runs;
- concurrency C: C clients at once, `--repeats` rounds: throughput (all tokens over the round's
  wall time), time to first token and request latency (median and p95 over all requests);
- `--llama-server GGUF`: the same concurrency rounds against llama.cpp's OpenAI server
  (llama-cpp-python[server], built by benchmarks/build_peers.sh) on the bundle's source GGUF, at the
  same thread count, after our server has stopped; ratios edgepack / llama-server;
- `--soak S`: requests back to back for S seconds, the server's resident memory (its /metrics)
  read every 30 s: first, last and highest.
"""

from __future__ import annotations

import argparse
import dataclasses
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


@dataclasses.dataclass
class Round:
    throughput: float  # tok/s, every client's tokens over the round's wall time: median of the rounds
    ttft: float  # s, median over every request
    ttft_p95: float
    latency: float
    p95: float  # request latency

    def __str__(self) -> str:
        return (f"{self.throughput:6.1f} tok/s in all, time to first token {self.ttft * 1e3:.0f} ms "
                f"(p95 {self.ttft_p95 * 1e3:.0f}), latency p50 {self.latency:.2f} s, p95 {self.p95:.2f} s")


def concurrent(address: tuple[str, int], tokens: int, repeats: int, c: int) -> Round:
    """`repeats` rounds of `c` clients streaming the same completion at once."""
    throughput, ttft, latency = [], [], []
    for _ in range(repeats):
        results = [None] * c
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, stream(address, tokens)))
                   for i in range(c)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if any(r[3] < tokens * 0.9 for r in results):  # a cut or refused answer would flatter the server
            raise SystemExit(f"{address}: a request came back short: {[r[3] for r in results]} of {tokens} pieces")
        throughput.append(sum(r[3] for r in results) / wall)
        ttft += [r[0] for r in results]
        latency += [r[2] for r in results]
    return Round(statistics.median(throughput), statistics.median(ttft), percentile(ttft, 0.95),
                 statistics.median(latency), percentile(latency, 0.95))


def llama_server(gguf: str, threads: int | None, tokens: int, repeats: int, concurrency: list[int]) -> dict[int, Round]:
    """The same rounds against llama-cpp-python's OpenAI server on a GGUF (benchmarks/build_peers.sh
    builds it into the peers folder), at the same thread count, alone on the machine."""
    import os
    import socket

    from edgepack import peers
    from edgepack.system import default_threads

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(peers.llama_cpp_dir()))
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                               "--port", str(port), "--n_threads", str(threads or default_threads()),
                               "--n_threads_batch", str(threads or default_threads()), "--n_ctx", "4096",
                               # by default a new request cuts the one generating short; ours queue
                               "--interrupt_requests", "False"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("llama-server did not start")
        stream(("127.0.0.1", port), tokens)  # its first request loads and warms up, as ours does at start
        return {c: concurrent(("127.0.0.1", port), tokens, repeats, c) for c in concurrency}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--soak", type=float, default=0, metavar="S", help="seconds of back-to-back requests")
    p.add_argument("--llama-server", metavar="GGUF", help="also run the concurrency rounds against llama-cpp-python's "
                                                         "server on this GGUF (the bundle's source)")
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
        ours = {c: concurrent(address, a.tokens, a.repeats, c) for c in a.concurrency}
        for c, r in ours.items():
            print(f"  concurrency {c}: {r}")
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
    if a.llama_server:
        theirs = llama_server(a.llama_server, a.threads, a.tokens, a.repeats, a.concurrency)
        for c, r in theirs.items():
            print(f"  llama-server, concurrency {c}: {r}")
            print(f"  edgepack / llama-server at concurrency {c}: throughput {ours[c].throughput / r.throughput:.2f}x, "
                  f"time to first token {ours[c].ttft / r.ttft:.2f}x, p95 latency {ours[c].p95 / r.p95:.2f}x "
                  "(time ratios: lower is faster)")


if __name__ == "__main__":
    main()
