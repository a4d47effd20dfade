"""`edgepack profile --matformer all`: every published MatFormer slice of a Gemma 3n E4B layout
side by side, planned without converting anything: predicted peak memory, bundle size, and the
decode speed the memory bandwidth allows (every weight of the decode graph and the whole KV cache
read once per token: bench.py's roofline), with the device's verdict and the largest slice that
fits it.

The speed is an upper bound from bandwidth alone (compute, PLE row gathers and the engine's own
overheads are not in it); the bandwidth is this machine's, measured as `bench` measures it,
unless `--bandwidth` gives the device's.
"""

from __future__ import annotations

from edgepack.errors import EdgepackError
from edgepack.footprint import device_budget
from edgepack.profile import _planned, device_engine, layout_of

MiB = 2**20


def slices_table(target: str | None, preset: str | None, recipe: str, fmt: str, context: int, prefill_len: int,
                 device: str | None = None, bandwidth_gb_s: float | None = None, threads: int | None = None) -> dict:
    from edgepack.converters import matformer

    m = layout_of(target, preset)
    if m.family.name != "gemma3n":
        raise EdgepackError(f"--matformer slices Gemma 3n (E4B) models, not {m.family.name}")
    engine = device_engine(fmt, device)
    budget = device_budget(device) if device else None
    measured_here = bandwidth_gb_s is None
    if measured_here:
        from edgepack.peers import read_bandwidth
        from edgepack.system import default_threads

        bandwidth_gb_s = read_bandwidth(threads or default_threads()) / 1e9
    rows = []
    for name in matformer.PUBLISHED:
        s = matformer.load_slice(name)
        try:
            cut = matformer.Cut(m.config, s)
        except EdgepackError as e:  # a narrower source (an E2B) has none of the wider slices
            rows.append({"name": name, "error": str(e)})
            continue
        cfg = cut.config
        p, fp = _planned(m.family, cfg, recipe, fmt, context, prefill_len, engine, m.storage, m.tokenizer_bytes)
        weights = p.graph_bytes()
        stores = sum(p.tensors[t.tensor].nbytes for t in p.tables.values())
        decode = weights + p.graph.cache_bytes
        rows.append({
            "name": name, "layers": cfg["num_hidden_layers"], "published_effective_b": matformer.EFFECTIVE_B[name],
            "effective_params": matformer.effective_params(cut.shapes(m.shapes)), "peak": fp.peak, "bundle_bytes": weights + stores + m.tokenizer_bytes,
            "decode_bytes": decode, "decode_tok_s_limit": bandwidth_gb_s * 1e9 / decode,
            "fits": None if budget is None else fp.peak <= budget})
    fitting = [r for r in rows if r.get("fits")]
    return {"subject": preset or target, "kind": "matformer", "format": fmt, "recipe": recipe, "context": context,
            "engine": engine, "device": device, "budget": budget, "bandwidth_gb_s": bandwidth_gb_s,
            "bandwidth_measured_here": measured_here, "rows": rows,
            "largest_fitting": max(fitting, key=lambda r: r["effective_params"])["name"] if fitting else None}


def format_table(r: dict) -> str:
    where = "measured on this machine" if r["bandwidth_measured_here"] else "given"
    lines = [f"{r['subject']}: MatFormer slices, {r['format']} {r['recipe']}, context {r['context']:,}, "
             f"{r['engine']} engine; decode limit at {r['bandwidth_gb_s']:.1f} GB/s read bandwidth ({where})",
             f"  {'slice':<13} {'layers':>6} {'effective':>10} {'peak MiB':>10} {'bundle MiB':>11} "
             f"{'tok/s limit':>12}" + ("  verdict" if r["device"] else "")]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"  {row['name']:<13} {row['error']}")
            continue
        verdict = "" if row["fits"] is None else ("  fits" if row["fits"] else "  does NOT fit")
        lines.append(f"  {row['name']:<13} {row['layers']:>6} {row['effective_params'] / 1e9:>9.2f}B "
                     f"{row['peak'] / MiB:>10,.0f} {row['bundle_bytes'] / MiB:>11,.0f} "
                     f"{row['decode_tok_s_limit']:>12.1f}{verdict}")
    if r["device"]:
        lines.append(f"{r['device']}: budget {r['budget'] / MiB:,.0f} MiB -> "
                     + (f"the largest slice that fits: {r['largest_fitting']}" if r["largest_fitting"]
                        else "no slice fits"))
    return "\n".join(lines)
