package dev.edgepack.core

import java.io.File
import java.security.MessageDigest

/** Small bundles written by the tests themselves: a manifest listing real files with their digests. */
object TestBundles {
    fun hex(bytes: ByteArray): String =
        MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

    /** An ONNX-layout bundle of `files` (name -> bytes) with a manifest edgepack would accept. */
    fun write(folder: File, files: Map<String, ByteArray>, schema: Long = 1): File {
        folder.mkdirs()
        files.forEach { (name, bytes) -> File(folder, name).apply { parentFile.mkdirs() }.writeBytes(bytes) }
        val entries = files.entries.joinToString(",\n    ") { (name, bytes) ->
            """{"path": "$name", "role": "${if (name.endsWith(".onnx")) "graph" else if (name.endsWith(".data")) "weights" else "tokenizer"}", "size": ${bytes.size}, "sha256": "${hex(bytes)}"}"""
        }
        File(folder, MANIFEST).writeText(
            """{"format": "edgepack-bundle", "schema_version": $schema, "created_by": "test", "runtime_format": "onnx",
  "model": {"family": "gemma3", "architecture": "Gemma3ForCausalLM", "source": "test",
            "config": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}},
  "max_context": 64,
  "graph": {"file": "model.onnx", "prefill_lengths": [], "inputs": "tokens", "cache_layers": [0, 1],
            "cache_lengths": [64, 64], "num_kv_heads": 1, "head_dim": 16, "vocab_size": 1000},
  "precision": {"weights": "fp32", "quantization": "none"},
  "row_stores": {},
  "tokenizer": {"file": "tokenizer.json", "bos_id": 2, "add_bos": true, "stop_ids": [1]},
  "chat_template": null,
  "files": [
    $entries
  ]}""")
        return folder
    }

    fun sample(folder: File): File = write(folder, mapOf(
        "model.onnx" to ByteArray(3000) { (it * 7).toByte() },
        "model.onnx.data" to ByteArray(3_000_000) { (it * 31 + 5).toByte() },
        "tokenizer.json" to "{\"model\": {}}".toByteArray()))
}
