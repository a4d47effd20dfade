"""How much of a full-size Gemma 3n PLE table becomes resident when a generation gathers its rows.

    .venv/bin/python benchmarks/ple_residency.py [--preset gemma-3n-E2B] [--prompt 512] [--generate 256]

Writes an int4 row store with the real table's shape (E2B: 262,144 x 7,680, 1.0 GB; per-row scales,
the layout `edgepack export --quant int4` writes for .litertlm) into a temporary folder, reads it
once sequentially (as a copy or a checksum would, leaving it in the page cache), then opens it
with the runtime's RowStore in a fresh process and gathers a prompt's rows at once and the
generated tokens' rows one by one, as the runtime does. Token ids are drawn from a Zipf law over
the vocabulary (real text repeats tokens). Reports the resident bytes of the table's mapping
(/proc/self/smaps) against the file's size, and against loading the table (the limit this
replaces).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHAPES = {"gemma-3n-E2B": (262_144, 30 * 256), "gemma-3n-E4B": (262_144, 35 * 256)}

CHILD = """
import json, sys
import numpy as np
from edgepack.plan import RowStore as Spec
from edgepack.runtime.row_store import RowStore
raw = json.loads(sys.argv[1]); folder = sys.argv[2]; prompt, gen = int(sys.argv[3]), int(sys.argv[4])
spec = Spec(**raw)
rng = np.random.default_rng(0)
ids = np.minimum(rng.zipf(1.2, prompt + gen) + 10, spec.rows - 1).astype(np.int64)
store = RowStore(__import__("pathlib").Path(folder) / spec.file, spec)
store.gather(ids[:prompt])
for i in ids[prompt:]:
    store.gather(ids[None, 0] * 0 + i)
res = 0; cur = False
for line in open("/proc/self/smaps"):
    f = line.split()
    if not f[0].endswith(":"):
        cur = line.rstrip().endswith(spec.file)
    elif f[0] == "Rss:" and cur:
        res += int(f[1]) * 1024
print(json.dumps({"resident": res, "distinct": int(len(set(ids.tolist())))}))
"""


def write_table(path: Path, rows: int, cols: int) -> dict:
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for start in range(0, rows, 8192):
            n = min(8192, rows - start)
            f.write(rng.integers(0, 256, (n, cols // 2), dtype=np.uint8).tobytes())
        scales_offset = f.tell()
        f.write((rng.random(rows, dtype=np.float32) * 0.01).tobytes())
    return {"file": path.name, "offset": 0, "shape": [rows, cols], "scale": 16.0, "dtype": "int4",
            "block": cols, "scales_offset": scales_offset}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(SHAPES), default="gemma-3n-E2B")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--generate", type=int, default=256)
    a = p.parse_args()
    rows, cols = SHAPES[a.preset]
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:  # /tmp may be a RAM disk
        spec = write_table(Path(tmp) / "per_layer_embeddings.bin", rows, cols)
        size = (Path(tmp) / spec["file"]).stat().st_size
        with open(Path(tmp) / spec["file"], "rb") as f:  # a sequential read: the cache is warm
            while f.read(1 << 24):
                pass
        import json

        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec), tmp, str(a.prompt), str(a.generate)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    row = cols // 2 + 4
    print(f"{a.preset} PLE table, int4 per-row: {size / 2**20:,.0f} MiB; {a.prompt} prompt + {a.generate} "
          f"generated tokens, {r['distinct']} distinct rows of {row:,} bytes")
    print("| resident | share of the file | vs loading the table | per distinct row |")
    print("|---|---|---|---|")
    print(f"| {r['resident'] / 2**20:,.1f} MiB | {r['resident'] / size:.2%} | {r['resident'] / size:.3f}x | "
          f"{r['resident'] / r['distinct'] / 1024:,.1f} KiB |")


if __name__ == "__main__":
    main()
