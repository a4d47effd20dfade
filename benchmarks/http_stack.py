"""Why `edgepack serve` uses the standard library's http.server: what an ASGI stack would add on a
board. Builds a throwaway venv with Starlette + uvicorn, then prints their installed size and the
idle resident memory of a one-route app on each stack (read 3 s after it starts listening).

    .venv/bin/python benchmarks/http_stack.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

IDLE = """
import os, sys, threading, time
def report():
    time.sleep(3)
    print(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), flush=True)
    os._exit(0)
threading.Thread(target=report, daemon=True).start()
"""
STDLIB = IDLE + """
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", 0), Health).serve_forever()
"""
ASGI = IDLE + """
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def health(request):
    return JSONResponse({"status": "ok"})
uvicorn.run(Starlette(routes=[Route("/health", health)]), host="127.0.0.1", port=0, log_level="error")
"""
ASGI_PACKAGES = ["starlette", "uvicorn", "anyio", "h11", "click", "idna", "sniffio"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", "starlette", "uvicorn"],
                       check=True)
        site = next(venv.glob("lib/python3*/site-packages"))
        sizes = {p: sum(f.stat().st_size for f in (site / p).rglob("*") if f.is_file())
                 for p in ASGI_PACKAGES if (site / p).is_dir()}
        rss = {name: int(subprocess.run([venv / "bin/python", "-c", code], capture_output=True, text=True,
                                        check=True).stdout) for name, code in (("http.server", STDLIB),
                                                                               ("Starlette + uvicorn", ASGI))}
    print(f"Starlette + uvicorn add {len(sizes)} packages, {sum(sizes.values()) / 1e6:.1f} MB installed "
          f"({', '.join(sizes)})")
    for name, value in rss.items():
        print(f"  idle RSS, {name:20} {value / 2**20:5.1f} MiB")


if __name__ == "__main__":
    main()
