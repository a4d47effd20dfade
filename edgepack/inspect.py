"""`edgepack inspect`: what a bundle holds, in words and as JSON."""

from __future__ import annotations

import dataclasses

from edgepack.bundle import Bundle
from edgepack.footprint import predict
from edgepack.plan import SCHEMA_VERSION, component_lines


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _lengths(lengths: list[int]) -> str:
    """How many layers keep how many slots: "16 x 512 slots, 4 x 4096 slots"."""
    counts = {n: lengths.count(n) for n in sorted(set(lengths))}
    return ", ".join(f"{c} x {n} slots" for n, c in counts.items())


def printable(text: str) -> str:
    """A manifest's strings are the bundle maker's: control characters (terminal escapes) are shown
    as escapes, never sent to the terminal."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def summary(b: Bundle, checksums_verified: bool) -> dict:
    p = b.plan
    g, tok = p.graph, p.tokenizer
    total = sum(f.size for f in p.files)
    info = {
        "path": str(b.path),
        "format": p.runtime_format,
        "schema_version": SCHEMA_VERSION,
        "family": p.model.family,
        "architecture": p.model.architecture,
        "layers": p.model.setting("num_hidden_layers"),
        "hidden_size": p.model.setting("hidden_size"),
        "vocab_size": g.vocab_size,
        "cache_layers": len(g.cache_layers),
        "cache_lengths": g.cache_lengths,
        "cache_bytes": g.cache_bytes,
        "max_context": p.max_context,
        "prefill_lengths": g.prefill_lengths or "dynamic",
        "precision": dataclasses.asdict(p.precision),
        "row_stores": {k: {"shape": v.shape, "dtype": v.dtype, "file": v.file, "offset": v.offset}
                       for k, v in p.row_stores.items()},
        "bos_id": tok.bos_id,
        "stop_ids": tok.stop_ids,
        "chat_template": bool(p.chat_template),
        "files": [dataclasses.asdict(f) for f in p.files],
        "total_bytes": total,
        "checksums": "verified" if checksums_verified else "sizes only",
        "predicted_peak": predict(b).as_dict(),
        "audio": dataclasses.asdict(p.audio) if p.audio else None,
    }
    lines = [
        f"bundle       {b.path}",
        f"format       {info['format']} (schema {info['schema_version']})",
        f"model        {info['architecture']}: {info['layers']} layers, hidden {info['hidden_size']}, "
        f"vocab {info['vocab_size']:,}",
        f"KV cache     {info['cache_layers']} cache-owning layers: {_lengths(info['cache_lengths'])}, "
        f"{_mb(info['cache_bytes'])} (context {info['max_context']})",
        f"prefill      {info['prefill_lengths']}",
        f"precision    {p.precision.weights} (quantization: {p.precision.quantization})",
    ]
    if p.precision.components:
        lines += component_lines(p.precision.components)
    lines += [
        f"tokens       bos {info['bos_id']}, stop {info['stop_ids']}, "
        f"chat template: {'yes' if info['chat_template'] else 'none (plain prompts)'}",
    ]
    if p.audio:
        where = "its audio sections" if p.runtime_format == "litertlm" else p.audio.encoder
        lines.append(f"audio        {p.audio.soft_tokens} soft tokens per clip (at most 30 s), encoder in {where}, "
                     f"loaded when a prompt has audio")
    for name, s in info["row_stores"].items():
        lines.append(f"row store    {name}: {s['shape'][0]:,} x {s['shape'][1]:,} {s['dtype']}, memory-mapped "
                     f"from {s['file']} @ {s['offset']:,}")
    fp = info["predicted_peak"]
    lines.append(f"memory       predicted peak {_mb(fp['peak'])} with this machine's {fp['engine']} engine "
                 f"(`edgepack profile` breaks it down)")
    lines.append("files")
    for f in p.files:
        lines.append(f"  {f.path:<28} {_mb(f.size):>12}  {f.role:<22} sha256 {f.sha256[:16]}…")
    lines.append(f"total        {_mb(total)}; checksums {info['checksums']}")
    info["text"] = printable("\n".join(lines))
    return info
