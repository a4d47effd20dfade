"""Runs on the device: edgepack's server (edgepack.serve, what `edgepack serve` runs) on loopback
and one greedy completion asked of it over HTTP, printed as one JSON line. Standalone on purpose: a
board has only `edgepack[runtime,serve]`. The server runs in this process, not as a child: qemu-user
can't start an arm64 child without binfmt_misc, which a container seldom has.

    python3 serve_on_device.py BUNDLE --prompt TEXT --tokens N
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--prompt", required=True)
    p.add_argument("--tokens", type=int, default=8)
    a = p.parse_args()

    from edgepack.serve import ServeOptions, Server

    server = Server(a.bundle, ServeOptions(port=0)).start()
    try:
        host, port = server.address
        url = f"http://{host}:{port}"
        while server.generator is None and server.load_error is None:
            time.sleep(0.1)
        if server.load_error:
            print(f"edgepack: error: {server.load_error}", file=sys.stderr)
            return 2
        body = json.dumps({"prompt": a.prompt, "max_tokens": a.tokens, "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        completion = json.loads(urllib.request.urlopen(request, timeout=1800).read())
        health = json.loads(urllib.request.urlopen(url + "/health", timeout=60).read())
        print(json.dumps({"completion": completion, "health": health}))
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
