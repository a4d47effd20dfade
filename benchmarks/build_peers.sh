#!/usr/bin/env bash
# Builds the benchmark peers that aren't plain venv installs into ~/.cache/edgepack/peers (or
# $EDGEPACK_PEERS), once; `edgepack bench --compare` finds them there. Never run by CI or the tests.
#  - llama-cpp-python (with its OpenAI server: benchmarks/serve_bench.py) compiles llama.cpp from
#    source: 12-25 minutes on 2 cores;
#  - onnxruntime-genai brings its own onnxruntime, so it lives outside the venv; its model builder
#    then makes its int8 and int4 models of Gemma 3 270M (~1 minute each).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
peer() { $py -c "from edgepack import peers; print(peers.$1)"; }

install() {  # install <pip spec...> into <target>, atomically, quietly unless it fails
  local target=$1; shift
  [ -d "$target" ] && { echo "already installed: $target"; return 0; }
  rm -rf "$target.partial"
  mkdir -p "$(dirname "$target")"  # a new machine has no peers folder yet
  echo "installing $* into $target ..."
  .venv/bin/pip --disable-pip-version-check install -q --no-cache-dir --target "$target.partial" "$@" \
    > "$target.log" 2>&1 || { tail -20 "$target.log"; echo "failed; log: $target.log" >&2; exit 1; }
  mv "$target.partial" "$target"
}

install "$(peer 'llama_cpp_dir()')" "llama-cpp-python[server]==$(peer LLAMA_CPP_VERSION)"
install "$(peer 'ort_genai_dir()')" "onnxruntime-genai==$(peer ORT_GENAI_VERSION)" onnx_ir
PYTHONPATH="$(peer 'ort_genai_dir()')" $py benchmarks/ort_genai_models.py 2>&1 | grep -v "it/s\]\|INFO\]" || true
