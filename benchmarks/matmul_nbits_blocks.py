"""onnxruntime's MatMulNBits, one decode step (a single token) through an LM head, at each weight
block: how fast its CPU kernels read 8- and 4-bit weights in blocks of 32, 64 and 128. The reason
the named recipes store the ONNX tied embedding / LM head in 8-bit blocks of 128
(docs/quantization.md).

    .venv/bin/python benchmarks/matmul_nbits_blocks.py [--threads 2] [--repeats 40]

Random codes and scales (the kernel's speed does not depend on the values), int8 activations
(accuracy_level 4, as edgepack's ONNX graphs and onnxruntime-genai's run). Each figure is the
median of --repeats calls after 5 warm-up calls; GB/s is the weight bytes (codes and float32
scales) over that time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

HEADS = {"Gemma 3 270M": (262_144, 640), "Gemma 3n E2B/E4B": (262_400, 2_048)}
VARIANTS = [(8, 32), (8, 64), (8, 128), (4, 32), (4, 128)]


def session(n: int, k: int, bits: int, block: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)
    scales = rng.random(n * (k // block), dtype=np.float32) * 0.01
    node = helper.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, n])],
                              initializer=[numpy_helper.from_array(codes, "B"), numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18),
                                                                    helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), codes.nbytes + scales.nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    print(f"| LM head | weights | ms per token (median of {args.repeats}) | GB/s |")
    print("|---|---|---|---|")
    for model, (n, k) in HEADS.items():
        x = np.random.default_rng(1).standard_normal((1, 1, k), dtype=np.float32)
        for bits, block in VARIANTS:
            s, nbytes = session(n, k, bits, block, args.threads)
            for _ in range(5):
                s.run(None, {"x": x})
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                s.run(None, {"x": x})
                times.append(time.perf_counter() - t0)
            t = float(np.median(times))
            print(f"| {model} {n:,} x {k:,} | {bits}-bit, blocks of {block} | {t * 1e3:.2f} | {nbytes / t / 1e9:.1f} |", flush=True)
            del s


if __name__ == "__main__":
    main()
