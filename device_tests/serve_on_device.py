"""Runs on the device: `edgepack serve` on loopback and one greedy completion through it, printed as
one JSON line. Standalone on purpose: a board has only `edgepack[runtime,serve]`.

    python3 serve_on_device.py BUNDLE --prompt TEXT --tokens N
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--prompt", required=True)
    p.add_argument("--tokens", type=int, default=8)
    a = p.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "serve", a.bundle, "--port", "0"],
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
        url = re.search(r"http://[\d.]+:\d+/v1", first)
        ready = server.stderr.readline()
        if url is None or "ready: " not in ready:
            print(first + ready + server.stderr.read(), file=sys.stderr)
            return 2
        body = json.dumps({"prompt": a.prompt, "max_tokens": a.tokens, "temperature": 0}).encode()
        request = urllib.request.Request(url.group(0) + "/completions", body, {"Content-Type": "application/json"})
        completion = json.loads(urllib.request.urlopen(request, timeout=1800).read())
        health = json.loads(urllib.request.urlopen(url.group(0)[:-3] + "/health", timeout=60).read())
        print(json.dumps({"completion": completion, "health": health}))
        return 0
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    sys.exit(main())
