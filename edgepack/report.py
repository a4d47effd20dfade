"""The HTML report of `edgepack profile --html`: one self-contained file, its two charts embedded
as PNGs (matplotlib, `pip install edgepack[report]`).

- breakdown: the predicted parts as one stacked bar, the measured peak beside it, the device's
  budget as a line;
- memory over time (measured runs): RSS, PSS and each bundle file's resident bytes, with the
  moments the model finished loading and generation finished.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.profile import format_text

MiB = 2**20


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def charts(r: dict) -> dict[str, bytes]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgepackError("the HTML report needs matplotlib: pip install 'edgepack[report]'") from None
    if r.get("kind") == "matformer":
        return {"matformer slices": _png(slices_chart(plt, r))}
    out = {}
    parts = r["predicted"]["parts"]
    fig, ax = plt.subplots(figsize=(8, 2.8))
    left = 0.0
    for name, n in parts.items():
        ax.barh(["predicted"], [n / MiB], left=left, label=name)
        left += n / MiB
    if r.get("measured"):
        ax.barh(["measured"], [r["measured"]["peak_rss"] / MiB], color="0.4", label="measured peak RSS")
    if r.get("budget"):
        ax.axvline(r["budget"] / MiB, color="red", linestyle="--", label=f"{r['device']} budget")
    ax.set_xlabel("MiB")
    ax.set_title("peak memory")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=4, fontsize=8)
    out["breakdown"] = _png(fig)
    plt.close(fig)

    m = r.get("measured")
    if m:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        t = [s["t"] for s in m["samples"]]
        ax.plot(t, [s["rss"] / MiB for s in m["samples"]], label="RSS")
        ax.plot(t, [s["pss"] / MiB for s in m["samples"]], label="PSS")
        for f in m["file_sizes"]:
            ax.plot(t, [s["files"].get(f, 0) / MiB for s in m["samples"]], label=f"{f} resident", linewidth=1)
        for name, when in m["events"].items():
            ax.axvline(when, color="0.5", linestyle=":")
            ax.annotate(name, (when, ax.get_ylim()[1] * 0.95), fontsize=8)
        if r.get("budget"):
            ax.axhline(r["budget"] / MiB, color="red", linestyle="--", label=f"{r['device']} budget")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MiB")
        ax.set_title("memory over time")
        ax.legend(fontsize=8)
        out["timeline"] = _png(fig)
        plt.close(fig)
    return out


LINES = ("pi5-4gb", "pi5-8gb", "android-6gb", "android-8gb")  # budgets drawn on the slices chart


def slices_chart(plt, r: dict, measured: dict[str, dict] | None = None):
    """Predicted peak memory and the decode limit of each MatFormer slice against its effective
    parameters, with the budgets of common boards and phones; `measured` (slice name -> its
    measured "peak" bytes and "decode_tok_s") adds exported bundles' runs."""
    from edgepack.footprint import device_budget

    rows = sorted((row for row in r["rows"] if "error" not in row), key=lambda row: row["effective_params"])
    x = [row["effective_params"] / 1e9 for row in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [row["peak"] / MiB for row in rows], "o-", label="predicted peak memory")
    for row, xi in zip(rows, x):
        ax.annotate(row["name"], (xi, row["peak"] / MiB), fontsize=6, rotation=45)
    for name in dict.fromkeys((*LINES, *([r["device"]] if r.get("device") else []))):
        ax.axhline(device_budget(name) / MiB, linestyle="--", linewidth=1, color="red" if name == r.get("device")
                   else "0.6")
        ax.annotate(f"{name} budget", (x[0], device_budget(name) / MiB), fontsize=7, va="bottom")
    ran = [(xi, measured[row["name"]]) for row, xi in zip(rows, x) if row["name"] in (measured or {})]
    if ran:
        ax.plot([xi for xi, _ in ran], [m["peak"] / MiB for _, m in ran], "kx", markersize=9,
                label="measured peak memory")
    ax.set_xlabel("effective parameters (billions)")
    ax.set_ylabel("MiB")
    speed = ax.twinx()
    speed.plot(x, [row["decode_tok_s_limit"] for row in rows], "s:", color="tab:green", label="decode limit")
    if ran:
        speed.plot([xi for xi, _ in ran], [m["decode_tok_s"] for _, m in ran], "^", color="darkgreen",
                   label="measured decode")
    speed.set_ylabel(f"tok/s (limit at {r['bandwidth_gb_s']:.1f} GB/s)", color="tab:green")
    ax.set_title(f"{r['subject']}: MatFormer slices ({r['recipe']}, context {r['context']:,})")
    handles = ax.get_legend_handles_labels()[0] + speed.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    return fig


def _text(r: dict) -> str:
    if r.get("kind") == "matformer":
        from edgepack.slices import format_table

        return format_table(r)
    return format_text(r)


def write_html(r: dict, path: Path) -> Path:
    images = "".join(f'<h2>{name}</h2><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     for name, png in charts(r).items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgepack profile: "
            f"{html.escape(r['subject'])}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}"
            f"pre{{background:#f4f4f4;padding:1em}}</style></head><body><h1>edgepack profile</h1>"
            f"<pre>{html.escape(_text(r))}</pre>{images}</body></html>\n")
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(page)
    tmp.replace(path)
    return path
