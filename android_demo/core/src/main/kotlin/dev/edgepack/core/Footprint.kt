package dev.edgepack.core

import java.math.BigDecimal
import java.math.RoundingMode
import kotlin.math.ceil

/**
 * How much memory running a bundle takes, predicted from its manifest alone, and whether a device
 * has it: the arithmetic of edgepack/footprint.py, constant for constant (tested against it for
 * every device in edgepack/devices.json). An app checks this before it starts an engine, because
 * Android kills a process that outgrows the memory it has instead of letting it fail.
 */
object Footprint {
    const val MiB = 1L shl 20
    private const val PAGE = 4096L
    private const val RUNTIME_BYTES = 80 * MiB
    private const val PARSE_BASE_BYTES = 40 * MiB
    private const val TOKENIZER_RESIDENT_PER_FILE_BYTE = 1.8
    private const val TOKENIZER_PARSE_PER_FILE_BYTE = 16.0
    private const val DYNAMIC_PREFILL_CHUNK = 128L

    /** Resident bytes per graph byte, (float graph, quantized graph), per engine. LiteRT-LM on
     * Android runs the CompiledModel API with XNNPACK's weight cache in `cacheDir`: "compiled". */
    val WEIGHT_COPIES = mapOf("onnx" to (1.1 to 1.16), "compiled" to (1.0 to 1.0), "interpreter" to (2.0 to 2.1))
    val KV_COPIES = mapOf("onnx" to 1L, "compiled" to 1L, "interpreter" to 4L)

    fun predict(m: Manifest, engine: String): Prediction {
        val copies = WEIGHT_COPIES[engine] ?: throw BundleError("unknown engine '$engine': ${WEIGHT_COPIES.keys.joinToString(", ")}")
        val tokenizerBytes = m.fileEntry(m.tokenizer.file).size
        val parts = linkedMapOf(
            "runtime" to RUNTIME_BYTES,
            "tokenizer" to (tokenizerBytes * TOKENIZER_RESIDENT_PER_FILE_BYTE).toLong(),
            "weights" to (m.graphBytes * if (m.quantization != "none") copies.second else copies.first).toLong(),
            "row_stores" to m.rowStores.filterKeys { it != m.audio?.vocabStore }.values.sumOf { rowStoreResident(it, m.maxContext) },
            "kv_cache" to m.graph.cacheBytes * KV_COPIES.getValue(engine),
            "activations" to activationBytes(m.config, m.graph.prefillLengths, m.graph.vocabSize, m.maxContext),
        )
        return Prediction(parts, PARSE_BASE_BYTES + (tokenizerBytes * TOKENIZER_PARSE_PER_FILE_BYTE).toLong(), engine)
    }

    /** Pages of a memory-mapped table that `tokens` distinct rows touch, never more than the table. */
    fun rowStoreResident(s: RowStore, tokens: Long): Long {
        val row = s.rowBytes + 4 * s.scaleColumns
        val pagesPerRow = ceil(row.toDouble() / PAGE).toLong() + 1 // a row rarely starts on a page boundary
        return minOf(s.rows * row, tokens * pagesPerRow * PAGE)
    }

    /** The largest prefill chunk's attention scores, MLP, hidden states and logits, float32. */
    fun activationBytes(cfg: Map<String, Any?>, prefillLengths: List<Long>, vocabSize: Long, context: Long): Long {
        val chunk = prefillLengths.firstOrNull() ?: minOf(context, DYNAMIC_PREFILL_CHUNK)
        val ffn = when (val v = cfg["intermediate_size"] ?: 0L) {
            is List<*> -> v.maxOf { it as Long }
            else -> v as Long
        }
        val heads = cfg["num_attention_heads"] as Long
        val hidden = cfg["hidden_size"] as Long
        val streams = cfg["altup_num_inputs"] as Long? ?: 1L
        val scores = 2 * heads * chunk * context
        val mlp = 3 * chunk * ffn
        val states = 4 * chunk * hidden * streams
        return 4 * (scores + mlp + states + 2 * vocabSize)
    }

    /** A device profile's budget: RAM less what the OS keeps (footprint.py device_budget). */
    fun deviceBudget(d: Device): Long = (d.ramMib - d.osReserveMib) * MiB

    /** edgepack/devices.json's profiles, by name. */
    fun devices(json: String): Map<String, Device> {
        val root = Json.parse(json) as? Map<*, *> ?: throw BundleError("devices file: a JSON object is expected")
        val devices = root["devices"] as? Map<*, *> ?: throw BundleError("devices file: no \"devices\" object")
        return devices.entries.associate { (name, v) ->
            val d = v as? Map<*, *> ?: throw BundleError("devices file: $name is not an object")
            name.toString() to Device((d["ram_mib"] as? Long) ?: throw BundleError("devices file: $name.ram_mib"),
                                      (d["os_reserve_mib"] as? Long) ?: throw BundleError("devices file: $name.os_reserve_mib"))
        }
    }

    fun verdict(m: Manifest, engine: String, budgetBytes: Long): Verdict = Verdict(predict(m, engine), budgetBytes)
}

data class Device(val ramMib: Long, val osReserveMib: Long)

data class Prediction(val parts: Map<String, Long>, val parsePeak: Long, val engine: String) {
    val steady: Long get() = parts.values.sum()
    val peak: Long get() = maxOf(steady, parsePeak)

    /** The breakdown as `edgepack profile` and the refusal message print it. */
    fun lines(): List<String> {
        val out = parts.map { (name, n) -> "  ${name.padEnd(12)} ${mib(n).padStart(10)} MiB" }
        val why = if (parsePeak > steady) " (while parsing the tokenizer)" else ""
        return out + "  ${"peak".padEnd(12)} ${mib(peak).padStart(10)} MiB$why"
    }
}

data class Verdict(val prediction: Prediction, val budget: Long) {
    val fits: Boolean get() = prediction.peak <= budget
}

/** Python's f"{x:,.1f}" of bytes in MiB: the exact binary value rounded half to even, grouped. */
fun mib(n: Long): String {
    val v = BigDecimal(n.toDouble() / Footprint.MiB).setScale(1, RoundingMode.HALF_EVEN)
    val whole = v.toBigInteger().abs().toString().reversed().chunked(3).joinToString(",").reversed()
    val frac = v.abs().remainder(BigDecimal.ONE).movePointRight(1).toInt()
    return (if (v.signum() < 0) "-" else "") + "$whole.$frac"
}
