"""Exporting a checkpoint to int4 bundles: edgepack (ONNX, .litertlm) against litert-torch's
`export_hf` (Google's HF -> .litertlm path), in one run on the same checkpoint.

    .venv/bin/python benchmarks/export_peers.py CHECKPOINT [--limit-gb 20] [--only edgepack-onnx ...]

export_hf can't build Gemma 3n's multimodal class here (its vision tower needs timm), so for a
multimodal checkpoint it gets a text-only Gemma3nForCausalLM copy of the same weights.
Each export runs in its own child memory cgroup (hard limit, no swap), so one that outgrows the
machine is killed at the limit instead of taking the machine down; the row then says "killed at
the limit" and how long it ran. Peak RSS is the exporting process tree's resident set, sampled
every 0.2 s (VmHWM of each process: the page cache the cgroup also charges for written files is
not the exporter's memory). Bundle size: the bytes the export left in its output folder.
export_hf gets `dynamic_wi4_afp32` (int4 weights, float activations), the same 4096-token cache
and 128-token prefill as edgepack's default here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # device_tests.targets.MemoryCgroup
from device_tests.targets import MemoryCgroup  # noqa: E402
from edgepack.footprint import peak_rss  # noqa: E402

BIN = Path(sys.executable).parent
CONTEXT, PREFILL = 4096, 128


# litert-torch's export_hf imports TensorFlow's copy of the TFLite schema module, and TensorFlow isn't
# installed here (toolchain.md); ai-edge-litert ships the same generated module.
EXPORT_HF = """
import importlib.machinery, sys, types
from ai_edge_litert import schema_py_generated
for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
    module = sys.modules.setdefault(name, types.ModuleType(name))
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
sys.modules["tensorflow.lite.python"].schema_py_generated = schema_py_generated
sys.modules["tensorflow.lite.python.schema_py_generated"] = schema_py_generated
sys.argv = ["export_hf"] + sys.argv[1:]
from litert_torch.generative.export_hf import export_main
export_main.main(None)
"""


def commands(ckpt: Path, out: Path, hf_ckpt: Path) -> dict[str, list[str]]:
    edgepack = [str(BIN / "edgepack"), "export", str(ckpt), "--quant", "int4", "--max-context", str(CONTEXT),
                "--prefill-len", str(PREFILL), "--force"]
    return {
        "edgepack-onnx": edgepack + ["--format", "onnx", "-o", str(out / "edgepack-onnx")],
        "edgepack-litertlm": edgepack + ["--format", "litertlm", "-o", str(out / "edgepack-litertlm")],
        "export_hf": [sys.executable, "-c", EXPORT_HF, str(hf_ckpt), str(out / "export_hf"),
                      "--quantization_recipe=dynamic_wi4_afp32", f"--cache_length={CONTEXT}",
                      f"--prefill_lengths=[{PREFILL}]", "--externalize_embedder=True"],
    }


def text_only_copy(ckpt: Path, dest: Path) -> Path:
    """export_hf builds the checkpoint's own class, and Gemma3nForConditionalGeneration's vision
    tower needs timm, which can't be installed here (toolchain.md). It gets the same text weights
    as a Gemma3nForCausalLM checkpoint instead: `model.language_model.*` renamed `model.*`, the
    towers left out, bytes copied unchanged (edgepack reads both layouts the same way)."""
    config = json.loads((ckpt / "config.json").read_text())
    if config.get("architectures", [""])[0] != "Gemma3nForConditionalGeneration":
        return ckpt
    print("export_hf: a text-only copy of the checkpoint ...", file=sys.stderr, flush=True)
    dest.mkdir(parents=True, exist_ok=True)
    text = dict(config["text_config"], architectures=["Gemma3nForCausalLM"], model_type="gemma3n_text")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        text.setdefault(key, config.get(key))
    (dest / "config.json").write_text(json.dumps(text, indent=1))
    for f in ckpt.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, dest / f.name)
    prefix, weight_map = "model.language_model.", {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        with open(shard, "rb") as src:
            n = int.from_bytes(src.read(8), "little")
            header, start = json.loads(src.read(n)), 8 + n
            kept, offset = {}, 0
            for name, t in header.items():
                if name.startswith(prefix):
                    begin, end = t["data_offsets"]
                    kept["model." + name[len(prefix):]] = dict(t, data_offsets=[offset, offset + end - begin], _from=begin)
                    weight_map["model." + name[len(prefix):]] = shard.name
                    offset += end - begin
            head = json.dumps({k: {f: v for f, v in t.items() if f != "_from"} for k, t in kept.items()}).encode()
            head += b" " * (-len(head) % 8)
            with open(dest / shard.name, "wb") as out:
                out.write(len(head).to_bytes(8, "little") + head)
                for t in kept.values():
                    size = t["data_offsets"][1] - t["data_offsets"][0]
                    src.seek(start + t["_from"])
                    shutil.copyfileobj(_Limited(src, size), out, 16 << 20)
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


class _Limited:
    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _hwm(pid: int) -> int:
    try:
        return peak_rss(pid)
    except OSError:  # exited between listing and reading
        return 0


def run(name: str, cmd: list[str], out: Path, limit: int, timeout: float) -> dict:
    log = out / f"{name}.log"
    with MemoryCgroup(limit) as cg, open(log, "wb") as f:
        t0 = time.time()
        proc = subprocess.Popen(cg.wrap(cmd), stdout=f, stderr=subprocess.STDOUT)
        hwm: dict[int, int] = {}
        while proc.poll() is None and time.time() - t0 < timeout:
            for p in _tree(proc.pid):
                hwm[p] = max(hwm.get(p, 0), _hwm(p))
            time.sleep(0.2)
        timed_out = proc.poll() is None
        if timed_out:
            proc.kill()
        code = proc.wait()
        seconds = time.time() - t0
        killed = cg.oom_killed()
    folder = out / name
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
    ok = code == 0 and not killed and not timed_out
    return {"export": name, "ok": ok, "seconds": round(seconds), "peak_rss_mib": round(max(hwm.values(), default=0) / 2**20),
            "bundle_mib": round(size / 2**20) if ok else None,
            "result": "ok" if ok else "killed at the limit" if killed else "timed out" if timed_out else
            f"exit {code} (see {log})"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--limit-gb", type=float, default=20.0, help="memory limit per export (default: 20)")
    ap.add_argument("--timeout-min", type=float, default=40.0, help="per export (default: 40)")
    ap.add_argument("--only", nargs="*", help="a subset of: edgepack-onnx edgepack-litertlm export_hf")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if not (args.checkpoint / "config.json").exists():
        sys.exit(f"{args.checkpoint} is not a checkpoint folder")
    out = Path(tempfile.mkdtemp(prefix="export-peers-"))  # bundles are removed, logs kept
    rows = []
    hf_ckpt = args.checkpoint
    if not args.only or "export_hf" in args.only:
        hf_ckpt = text_only_copy(args.checkpoint, out / "text-only")
    for name, cmd in commands(args.checkpoint, out, hf_ckpt).items():
        if args.only and name not in args.only:
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.append(run(name, cmd, out, int(args.limit_gb * 2**30), args.timeout_min * 60))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        shutil.rmtree(out / name, ignore_errors=True)
    shutil.rmtree(out / "text-only", ignore_errors=True)
    print(f"logs: {out}", file=sys.stderr)
    print(f"checkpoint {args.checkpoint}; int4; context {CONTEXT}; limit {args.limit_gb:g} GiB\n")
    print("| export | result | peak RSS (MiB) | time (s) | bundle (MiB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['export']} | {r['result']} | {r['peak_rss_mib']:,} | {r['seconds']} | "
              f"{'-' if r['bundle_mib'] is None else format(r['bundle_mib'], ',')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
