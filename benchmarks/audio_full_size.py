"""Gemma 3n's audio path at full size (a synthetic E2B or E4B with the real layout, `edgepack synth`):
what the audio tower adds to an export, its bytes per recipe, how fast it encodes, how close the
int8 tower's soft tokens stay to fp32's.

    .venv/bin/python benchmarks/audio_full_size.py CHECKPOINT [--quant int8] [--runs 5] [--out DIR]

- Export: `edgepack export CHECKPOINT --format F --quant Q` in its own process (peak RSS from
  os.wait4, and the highest RSS sampled in each stage it reports), next to the same export of a
  text-only view of the checkpoint (its config without `audio_config`, the shards linked): the
  audio tower must not raise the export's peak.
- Encoder speed: one 30 s clip of espeak-ng speech, encoded `--runs` times at 2 threads, alternating
  edgepack's runtime on the ONNX and the `.litertlm` bundle; real-time factor = median seconds per
  second of audio. LiteRT-LM is timed on the same `.litertlm` and clip when `--litert-lm` is given
  (its audio path prefills the whole prompt, so its time includes that prefill), and edgepack's
  runtime the same way beside it: time to the first token of "Hi." after the clip and without it.
- Memory: a 30 s clip + 128 tokens in its own `edgepack run` process, peak RSS against the
  footprint's prediction with the audio encoder loaded (edgepack/footprint.py).
- Quality: cosine similarity of each soft token of the quantized tower to the float tower's
  (transformers' modules, fp32, the checkpoint's weights), on the clip.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MiB = 2**20
SPEECH = ("Gemma three n runs on phones and small boards. It hears speech, and it answers in text. "
          "This clip is thirty seconds of synthetic speech, long enough to fill the audio encoder's window.")


def export(source: Path, out: Path, fmt: str, quant: str) -> dict:
    """One `edgepack export` in its own process: its peak RSS (wait4), and the highest RSS sampled
    (every 0.2 s) during each stage it reports, so the audio tower's stage shows apart."""
    exe = Path(sys.executable).parent / "edgepack"
    t0 = time.time()
    proc = subprocess.Popen([str(exe), "export", str(source), "--format", fmt, "--quant", quant, "-o", str(out),
                             "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})  # stage lines as they come
    stage, stages, err = ["start"], {}, []

    def follow() -> None:  # the CLI's stage lines: "lowering ... ...", then "lowering ...: done in N s"
        for line in proc.stderr:
            err.append(line)
            if line.rstrip().endswith("..."):
                stage[0] = line.strip().rstrip(". ")
    threading.Thread(target=follow, daemon=True).start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(OSError, StopIteration):
            rss = int(next(x for x in open(f"/proc/{proc.pid}/status") if x.startswith("VmRSS")).split()[1]) * 1024
            stages[stage[0]] = max(stages.get(stage[0], 0), round(rss / MiB))
        time.sleep(0.2)
    if status:
        raise SystemExit(f"export failed: {''.join(err)[-2000:]}")
    return {"seconds": round(time.time() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss * 1024 / MiB),
            "stage_peaks_mib": stages, "bytes": sum(f.stat().st_size for f in out.iterdir())}


def text_only_view(source: Path, where: Path) -> Path:
    """The checkpoint without its audio_config: edgepack then reads the text decoder alone."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for f in source.iterdir():
        if f.name not in ("config.json", "preprocessor_config.json"):
            (where / f.name).symlink_to(f.resolve())
    config = json.loads((source / "config.json").read_text())
    config.pop("audio_config")
    (where / "config.json").write_text(json.dumps(config))
    return where


def speech_clip(folder: Path, seconds: float = 30.0) -> Path:
    raw, out = folder / "speech-raw.wav", folder / "speech-30s.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), SPEECH], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", str(out), "repeat", "3", "trim", "0", str(seconds - 0.1)],
                   check=True, capture_output=True)
    return out


def encode_times(bundles: dict[str, Path], clip: Path, runs: int) -> dict:
    from edgepack.runtime import Generator
    from edgepack.runtime.audio import load_speech

    samples = load_speech(clip)
    seconds = len(samples) / 16_000
    gens = {name: Generator(b, threads=2) for name, b in bundles.items()}
    for g in gens.values():
        g.audio_soft_tokens([samples])  # loads the encoder; not timed
    times = {name: [] for name in gens}
    for _ in range(runs):
        for name, g in gens.items():  # alternating engines
            t0 = time.perf_counter()
            g.audio_soft_tokens([samples])
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3),
                   "rtf": round(statistics.median(t) / seconds, 3)} for name, t in times.items()} | {"clip_s": seconds}


def litert_lm_times(litertlm: Path, clip: Path, runs: int, cache: Path) -> dict:
    """LiteRT-LM's time to the first token of an audio prompt (its frontend, encoder, adapter and
    the prompt's prefill), and of the same prompt without the audio: the difference is its audio."""
    import litert_lm

    cpu = litert_lm.Backend.CPU(thread_count=2)
    cache.mkdir(parents=True, exist_ok=True)  # it refuses a folder that does not exist
    engine = litert_lm.Engine(str(litertlm), backend=cpu, audio_backend=cpu, cache_dir=str(cache))
    out = {}
    for name, content in (("with_audio", [{"type": "audio", "path": str(clip)}, {"type": "text", "text": "Hi."}]),
                          ("text_only", [{"type": "text", "text": "Hi."}])):
        t = []
        for _ in range(runs):
            conv = engine.create_conversation()
            t0 = time.perf_counter()
            conv.send_message({"role": "user", "content": content}, max_output_tokens=1)
            t.append(time.perf_counter() - t0)
        out[name] = {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3)}
    return out


def edgepack_times(litertlm: Path, clip: Path, runs: int) -> dict:
    """edgepack's runtime timed as litert_lm_times times LiteRT-LM, on the same file: "Hi." after the
    clip and alone, one generated token, the KV cache emptied before each run (a new conversation
    reuses nothing). Without a chat template (a synthetic checkpoint has none) the prompt is the
    clip's tokens and the text; LiteRT-LM's own template adds a few tokens around them."""
    from edgepack.runtime import Generator

    gen = Generator(litertlm, threads=2)
    gen.generate("Hi.", max_new_tokens=1, audio=[clip])  # loads the audio graphs: not timed
    out = {}
    for name, audio in (("with_audio", [clip]), ("text_only", None)):
        t = []
        for _ in range(runs):
            gen.engine.reset()
            t0 = time.perf_counter()
            gen.generate("Hi.", max_new_tokens=1, audio=audio)
            t.append(time.perf_counter() - t0)
        out[name] = {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3)}
    return out


def audio_run_peak(bundle: Path, clip: Path) -> dict:
    """A 30 s clip + 128 generated tokens in its own `edgepack run` process: its peak RSS against
    the footprint's prediction with the audio encoder loaded."""
    from edgepack.bundle import Bundle
    from edgepack.footprint import predict

    exe = Path(sys.executable).parent / "edgepack"
    proc = subprocess.run([str(exe), "run", str(bundle), "--audio", str(clip), "--prompt", "Transcribe this audio.",
                           "--max-new-tokens", "128", "--threads", "2", "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"run failed: {proc.stderr[-2000:]}")
    stats = json.loads(proc.stdout)["stats"]
    fp = predict(Bundle(bundle))
    return {"measured_mib": round(stats["peak_rss_bytes"] / MiB), "predicted_mib": round(fp.peak_with_audio / MiB),
            "predicted_over_measured": round(fp.peak_with_audio / stats["peak_rss_bytes"], 3),
            "audio_s": stats["audio_s"], "first_token_s": stats["first_token_s"], "decode_tok_s": stats["decode_tok_s"]}


def cosine(checkpoint: Path, bundle: Path, clip: Path) -> dict:
    """Each valid soft token of the bundle's (quantized) tower against the checkpoint's float tower
    (transformers' modules in fp32, the checkpoint's weights) on the same features."""
    import torch

    from edgepack.converters import sources
    from edgepack.converters.decoder import load_weights
    from edgepack.converters.models.gemma3n_audio import AudioGraph
    from edgepack.runtime import Generator, audio

    src = sources.open_source(checkpoint)
    graph = AudioGraph(src.audio["config"]["audio_config"], src.config)
    load_weights(graph, src, progress=None)
    feats, mask = audio.log_mel(audio.load_speech(clip))
    with torch.no_grad():
        want, valid = graph(torch.from_numpy(feats)[None], torch.from_numpy(mask)[None])
    want = want[0][valid[0]].numpy()
    got = Generator(bundle).audio_soft_tokens([clip])[0][:len(want)]
    cos = (want * got).sum(-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1))
    return {"tokens": len(want), "min": round(float(cos.min()), 4), "median": round(float(np.median(cos)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--formats", default="onnx,litertlm")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, help="keep the bundles here")
    ap.add_argument("--baseline", default="onnx,litertlm",
                    help="formats also exported from the text-only view, for the peak comparison")
    ap.add_argument("--reuse", action="store_true", help="take the bundles --out holds from an earlier run")
    ap.add_argument("--litert-lm", action="store_true", help="time LiteRT-LM on the .litertlm too")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="audio-full-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"checkpoint": str(args.checkpoint), "quant": args.quant, "exports": {}}
    bundles = {}
    view = text_only_view(args.checkpoint, work / "text-only-view")
    for fmt in args.formats.split(","):
        bundles[fmt] = work / f"bundle-{fmt}-{args.quant}"
        if args.reuse:
            continue
        pairs = [(fmt, args.checkpoint)] + ([(f"{fmt}-text-only", view)] if fmt in args.baseline.split(",") else [])
        for name, source in pairs:
            out = work / f"bundle-{name}-{args.quant}"
            report["exports"][name] = export(source, out, fmt, args.quant)
            if not name.endswith("text-only"):
                m = json.loads((out / "manifest.json").read_text())
                report["exports"][name]["audio_tower_bytes"] = m["precision"]["components"]["audio_tower"]["bytes"]
            else:
                shutil.rmtree(out)
            print(name, report["exports"][name], flush=True)
    clip = speech_clip(work)
    report["encode"] = encode_times(bundles, clip, args.runs)
    print("encode", report["encode"], flush=True)
    if args.litert_lm and "litertlm" in bundles:
        report["litert_lm"] = litert_lm_times(bundles["litertlm"] / "model.litertlm", clip, args.runs, work / "lrt-cache")
        print("litert_lm", report["litert_lm"], flush=True)
        report["edgepack_same_prompt"] = edgepack_times(bundles["litertlm"], clip, args.runs)
        print("edgepack, the same prompt", report["edgepack_same_prompt"], flush=True)
    report["audio_run"] = {fmt: audio_run_peak(b, clip) for fmt, b in bundles.items()}
    print("audio run", report["audio_run"], flush=True)
    report["cosine_vs_fp32"] = {fmt: cosine(args.checkpoint, b, clip) for fmt, b in bundles.items()}
    print("cosine", report["cosine_vs_fp32"], flush=True)
    report["machine"] = {"cpus": os.cpu_count(), "load": os.getloadavg()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
