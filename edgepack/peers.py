"""The engines `edgepack bench --compare` runs beside edgepack's runtime, and the machine's read
bandwidth for the roofline.

Each peer runs in a child process (its own peak RSS) and prints one JSON line with the same keys
as edgepack's own run: load_s, ttft_s, prefill_tok_s, decode_tok_s, and its own counts of the
tokens it prefilled and decoded. Greedy decoding throughout; how each figure is taken is in
edgepack/bench.py.

- LiteRT-LM (`litert-lm-api`): its own benchmark on the very same `.litertlm` file.
- llama.cpp (`llama-cpp-python`) on the source GGUF. It compiles from source (~12-25 minutes on
  2 cores), so it is never installed into the venv: `benchmarks/build_peers.sh` builds it once
  into PEERS_DIR and the child process finds it there.
- onnxruntime-genai on the model its own builder makes from the same weights at the bundle's bit
  width (it can't run edgepack's ONNX graph: it drives its own input/output names and a
  GroupQueryAttention cache). Installed into PEERS_DIR beside its own onnxruntime, so it never
  touches the venv's; the models come from benchmarks/ort_genai_models.py.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PEERS_DIR = Path(os.environ.get("EDGEPACK_PEERS", Path.home() / ".cache" / "edgepack" / "peers"))
LLAMA_CPP_VERSION = "0.3.36"
ORT_GENAI_VERSION = "0.18.0"


def litert_lm_cache(b) -> Path | None:
    """The folder LiteRT-LM keeps a bundle's packed weights in, beside edgepack's own
    (runtime/litert_cache.py); None with EDGEPACK_CACHE=off."""
    from edgepack.runtime import litert_cache

    ours = litert_cache.planned_files(b)
    if ours is None:
        return None
    folder = ours.model.parent / "litert-lm"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def llama_cpp_dir() -> Path:
    return PEERS_DIR / f"llama-cpp-python-{LLAMA_CPP_VERSION}"


def ort_genai_dir() -> Path:
    return PEERS_DIR / f"onnxruntime-genai-{ORT_GENAI_VERSION}"


def ort_genai_models_dir() -> Path:
    return PEERS_DIR / "onnxruntime-genai-models"


# argv: model, prefill, decode, threads, cache folder (where it keeps XNNPACK's packed weights),
# context, text. In its benchmark mode the prompt's tokens are cut or padded with zeros to
# `prefill` and no <bos> is added: the text's first tokens, as the others get them after <bos>.
# Its prefill tok/s is its own (prompt tokens over the prefill turn); its time to first token
# starts before it tokenizes the prompt.
LITERT_LM = """
import json, sys, time
t0 = time.perf_counter()
import litert_lm
imported = time.perf_counter() - t0
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
b = litert_lm.Benchmark(model_path=sys.argv[1], backend=litert_lm.Backend.CPU(thread_count=int(sys.argv[4])),
                        prefill_tokens=int(sys.argv[2]), decode_tokens=int(sys.argv[3]), cache_dir=sys.argv[5],
                        max_num_tokens=int(sys.argv[6]), prompt=open(sys.argv[7], errors="replace").read()[:20000])
i = b.run()
print(json.dumps({"load_s": imported + i.init_time_in_second, "ttft_s": i.time_to_first_token_in_second,
                  "prefill_tok_s": i.last_prefill_tokens_per_second, "decode_tok_s": i.last_decode_tokens_per_second,
                  "prefilled": i.last_prefill_token_count, "decoded": i.last_decode_token_count}))
"""

# argv: gguf, prefill, decode, threads, text, context. The prompt is the text's first `prefill`
# tokens by the GGUF's own tokenizer (the same vocabulary as the bundle's), <bos> first.
LLAMA_CPP = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import llama_cpp
from llama_cpp import Llama
prefill, decode, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[6]), n_batch=512, n_threads=threads,
            n_threads_batch=threads, verbose=False)
load = time.perf_counter() - t0
ids = llm.tokenize(open(sys.argv[5], errors="replace").read().encode(), add_bos=True)[:prefill]
vocab = llm.n_vocab()
def next_token():  # greedy, from the last position's logits (the C API's view, no copy)
    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))
t0 = time.perf_counter()
llm.eval(ids)
prefill_s = time.perf_counter() - t0
prefilled = llm.n_tokens
token = next_token()
ttft = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(decode):
    llm.eval([token])
    token = next_token()
elapsed = time.perf_counter() - t0
print(json.dumps({"load_s": load, "ttft_s": ttft, "prefill_tok_s": prefilled / prefill_s, "decode_tok_s": decode / elapsed,
                  "prefilled": prefilled, "decoded": llm.n_tokens - prefilled}))
"""


# argv: model folder, prefill, decode, threads, text, context. Its runtime wants <bos> added by
# the caller. The thread count and the context go into a copy of genai_config.json beside links
# to the model files. Its prefill (append_tokens) computes the first token's logits as well.
ORT_GENAI = """
import json, os, sys, tempfile, time
from pathlib import Path
src, prefill, decode, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
context = int(sys.argv[6])
view = Path(tempfile.mkdtemp())
for f in src.iterdir():
    if f.name != "genai_config.json":
        os.symlink(f, view / f.name)
config = json.loads((src / "genai_config.json").read_text())
config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
config["model"]["context_length"] = context
config["search"]["max_length"] = context
(view / "genai_config.json").write_text(json.dumps(config))
t0 = time.perf_counter()
import onnxruntime_genai as og
model = og.Model(str(view))
load = time.perf_counter() - t0
tokenizer = og.Tokenizer(model)
ids = [config["model"]["bos_token_id"]] + list(tokenizer.encode(open(sys.argv[5], errors="replace").read()))
ids = ids[:prefill]
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=context)
gen = og.Generator(model, params)
t0 = time.perf_counter()
gen.append_tokens(ids)
prefill_s = time.perf_counter() - t0
prefilled = len(gen.get_sequence(0))
gen.generate_next_token()
ttft = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(decode):
    gen.generate_next_token()
elapsed = time.perf_counter() - t0
print(json.dumps({"load_s": load, "ttft_s": ttft, "prefill_tok_s": prefilled / prefill_s, "decode_tok_s": decode / elapsed,
                  "prefilled": prefilled, "decoded": len(gen.get_sequence(0)) - prefilled - 1}))
"""


def read_bandwidth(threads: int, mib_per_thread: int = 512, repeats: int = 5) -> float:
    """The most bytes/s that `threads` threads read from memory, each streaming through its own
    array (numpy's reductions release the GIL): the best of `repeats` runs of three kernels (a float
    sum, an integer max, a non-zero count). One kernel alone can be compute-bound below the memory's
    speed: a float sum alone read 17.5 GB/s on a Xeon where decode ran at 103% of it."""
    arrays = [np.ones(mib_per_thread * 2**20 // 8, np.int64) for _ in range(threads)]
    kernels = (lambda a: np.sum(a.view(np.float32)), np.max, np.count_nonzero)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for kernel in kernels:
            for _ in range(repeats):
                t0 = time.perf_counter()
                list(pool.map(kernel, arrays))
                best = max(best, sum(a.nbytes for a in arrays) / (time.perf_counter() - t0))
    return best
