"""Google's LiteRT-LM engine (litert-lm-api) runs edgepack's .litertlm unchanged, and its greedy
output equals transformers'; litert-lm-builder's own reader parses the file's sections."""

from __future__ import annotations

import pytest
import torch

from edgepack.system import default_threads

from checkpoints import MODELS

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived a small dragon who"]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def litert_lm():
    import litert_lm

    return litert_lm


@pytest.mark.parametrize("name", MODELS)
def test_litert_lm_greedy_equals_transformers(name, bundle, reference, litert_lm, tmp_path):
    from tokenizers import Tokenizer

    folder = bundle(name, "litertlm")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    engine = litert_lm.Engine(str(folder / "model.litertlm"), backend=litert_lm.Backend.CPU(thread_count=default_threads()),
                              cache_dir=str(tmp_path))
    assert engine.bos_token_id == 2
    for prompt in PROMPTS:
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=NEW_TOKENS,
                                        sampler_config=litert_lm.SamplerConfig(top_k=1))
        session.run_prefill([prompt])
        text = session.run_decode().texts[0]
        session.close()
        ids = [2] + tok.encode(prompt, add_special_tokens=False).ids
        assert engine.tokenize(prompt) == ids[1:]
        with torch.no_grad():
            out = reference(name).generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
        want = out[0, len(ids):].tolist()
        stops = [i for i, t in enumerate(want) if t in (1, 106)]
        want = want[:stops[0]] if stops else want
        # LiteRT-LM's detokenizer renders special pieces (random weights emit <unusedN>), so keep them
        assert text == tok.decode(want, skip_special_tokens=False), prompt


def test_sections_read_by_litert_lm_builder(bundle):
    """The independent reader from Google's builder package sees the contract's sections."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    from edgepack.converters.litertlm_export import read_sections

    path = bundle("gemma3n_multimodal", "litertlm") / "model.litertlm"
    sections = read_sections(path)
    kinds = [(s["data_type"], s["model_type"]) for s in sections]
    assert ("LlmMetadataProto", None) in kinds
    assert ("HF_Tokenizer_Zlib", None) in kinds
    for model_type in ("tf_lite_prefill_decode", "tf_lite_embedder", "tf_lite_per_layer_embedder"):
        assert ("TFLiteModel", model_type) in kinds
    for s in sections:
        assert s["offset"] % (16 * 1024) == 0  # sections start on 16 KiB boundaries
    md_section = next(s for s in sections if s["data_type"] == "LlmMetadataProto")
    with open(path, "rb") as f:
        f.seek(md_section["offset"])
        md = llm_metadata_pb2.LlmMetadata.FromString(f.read(md_section["size"]))
    assert md.WhichOneof is not None and md.llm_model_type.HasField("gemma3n")
    assert list(md.start_token.token_ids.ids) == [2]
    assert sorted(t.token_ids.ids[0] for t in md.stop_tokens) == [1, 106]
    assert md.max_num_tokens == 64
