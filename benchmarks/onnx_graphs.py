"""Decode step of an edgepack ONNX bundle against onnxruntime-genai's graph of the same model, both
in this process's onnxruntime: the graphs compared apart from the two runtimes' loops and
onnxruntime versions (`edgepack bench --compare` times each engine whole, onnxruntime-genai on
the onnxruntime it ships).

    .venv/bin/python benchmarks/onnx_graphs.py BUNDLE [GENAI_MODEL_DIR] [--rounds 12] [--steps 48]

edgepack's side is its runtime's engine (OnnxEngine.decode: its Python around the run included);
onnxruntime-genai's is its model.onnx on a session driven as its generator drives it: every
past_key_values.* bound in place as its present.* (past_present_share_buffer), input_ids and a
growing attention_mask bound each step, the logits into one array. Both decode from position 512
(edgepack's cache prefilled with 512 tokens; the peer's holds 512 positions of random values,
which costs the same arithmetic), a greedy token per step. Rounds alternate between the two;
each round's figure is its median step, and the table gives the median of the rounds and their
min-max. GENAI_MODEL_DIR defaults to the int4 build that benchmarks/ort_genai_models.py writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

START = 512


def genai_step(folder: str, context: int, threads: int):
    """A decode step of onnxruntime-genai's graph: (position, token) -> logits [vocab]."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(f"{folder}/model.onnx", opts, providers=["CPUExecutionProvider"])
    decoder = json.loads(Path(folder, "genai_config.json").read_text())["model"]["decoder"]
    heads, dim, window = decoder["num_key_value_heads"], decoder["head_size"], decoder["sliding_window"]["window_size"]
    io = session.io_binding()
    held = []  # the cache OrtValues, alive as long as the binding
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):  # [batch, kv heads, past_sliding_length or past_sequence_length, dim]
            rows = window if i.shape[2] == "past_sliding_length" else context
            value = ort.OrtValue.ortvalue_from_numpy(np.random.rand(1, heads, rows, dim).astype(np.float32))
            held.append(value)
            io.bind_ortvalue_input(i.name, value)
            io.bind_ortvalue_output(i.name.replace("past_key_values", "present"), value)
    vocab = session.get_outputs()[0].shape[-1]
    logits = np.empty((1, 1, vocab), np.float32)
    io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))

    def step(pos: int, token: int) -> np.ndarray:
        io.bind_cpu_input("input_ids", np.array([[token]], np.int64))
        io.bind_cpu_input("attention_mask", np.ones((1, pos + 1), np.int64))
        session.run_with_iobinding(io)
        return logits[0, -1]

    step.held = held
    return step


def main() -> None:
    from edgepack import peers
    from edgepack.bundle import Bundle
    from edgepack.runtime.onnx_engine import OnnxEngine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("genai_model", nargs="?", default=str(peers.ort_genai_models_dir() / "gemma-3-270m-int4"))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    engine = OnnxEngine(Bundle(a.bundle), threads=a.threads)
    engine.prefill(np.arange(100, 100 + START, dtype=np.int32))
    steps = {"edgepack": engine.decode, "onnxruntime-genai": genai_step(a.genai_model, engine.cache_len, a.threads)}
    rounds: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(a.rounds):
        for name in (steps if r % 2 == 0 else reversed(steps)):
            token, times = 100, []
            for pos in range(START, START + a.steps):
                t0 = time.perf_counter()
                token = int(np.argmax(steps[name](token, pos) if name == "edgepack" else steps[name](pos, token)))
                times.append(time.perf_counter() - t0)
            rounds[name].append(statistics.median(times))
        engine.held = engine.held[:START]  # the next round decodes the same positions again
    peer = statistics.median(rounds["onnxruntime-genai"])
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, {a.threads} threads, {a.rounds} rounds of {a.steps} steps")
    print("| graph | decode step ms | ratio to onnxruntime-genai's |")
    print("|---|---|---|")
    for name, values in rounds.items():
        ms = statistics.median(values) * 1e3
        print(f"| {name} | {ms:.2f} ({min(values) * 1e3:.2f}-{max(values) * 1e3:.2f}) | "
              f"{statistics.median(values) / peer:.3f} |")


if __name__ == "__main__":
    main()
