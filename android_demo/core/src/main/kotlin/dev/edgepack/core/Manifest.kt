package dev.edgepack.core

/**
 * An edgepack bundle's manifest.json, read into types and validated field by field exactly as
 * the Python side does (edgepack/plan.py: the same fields in the same order, the same ranges, the
 * same one-line messages), so an app refuses what `edgepack inspect` refuses, in the same words.
 * docs/bundle-format.md describes each field.
 */
class BundleError(message: String) : Exception(message)

const val MANIFEST = "manifest.json"
const val FORMAT_NAME = "edgepack-bundle"
const val SCHEMA_VERSION = 1L
const val MAIN_SECTION = "tf_lite_prefill_decode" // the .litertlm section with the prefill/decode graphs
private const val MAX_CONTEXT = 1L shl 20
private val FORMATS = listOf("litertlm", "onnx")
private val GRAPH_INPUTS = listOf("tokens", "embeddings")
private val WEIGHTS = listOf("fp32", "quantized")
val STORE_DTYPES = mapOf("float32" to 32, "int8" to 8, "int4" to 4) // bits per value

data class FileEntry(val path: String, val role: String, val size: Long, val sha256: String)

data class Section(val dataType: String, val modelType: String?, val offset: Long, val size: Long)

data class Graph(
    val file: String,
    val prefillLengths: List<Long>,
    val inputs: String,
    val cacheLayers: List<Long>,
    val cacheLengths: List<Long>,
    val numKvHeads: Long,
    val headDim: Long,
    val vocabSize: Long,
    val sections: List<Section>?,
    /** ONNX graphs whose attention is onnxruntime's GroupQueryAttention (edgepack/plan.py Graph). */
    val groupQuery: Boolean = false,
) {
    /** Bytes of every K and V cache tensor, float32 (edgepack/contract.py cache_bytes). */
    val cacheBytes: Long get() = cacheLengths.sumOf { 2 * 4 * numKvHeads * it * headDim }
    val mainSection: Section? get() = sections?.firstOrNull { it.modelType == MAIN_SECTION }
}

data class RowStore(
    val file: String, val offset: Long, val shape: List<Long>, val dtype: String,
    val scale: Double, val block: Long?, val scalesOffset: Long?,
) {
    val rows: Long get() = shape[0]
    val cols: Long get() = shape[1]
    val rowBytes: Long get() = cols * STORE_DTYPES.getValue(dtype) / 8
    val scaleColumns: Long get() = if (dtype == "float32") 0 else cols / (block ?: cols)

    /** (offset, length) of the codes and of the scales in [file]. */
    val byteRanges: List<Pair<Long, Long>>
        get() = listOfNotNull(offset to rows * rowBytes,
                              if (scaleColumns > 0) (scalesOffset ?: 0) to rows * scaleColumns * 4 else null)
}

data class Tokenizer(val file: String, val bosId: Long, val addBos: Boolean, val stopIds: List<Long>)

/** Gemma 3n's audio path (plan.py `Audio`): where the encoder is, how a clip enters a prompt. */
data class Audio(
    val encoder: String, val vocabStore: String, val softTokens: Long, val startId: Long, val softId: Long,
    val endId: Long, val vocabOffset: Long, val multimodalOffset: Long, val features: Map<*, *>,
)

data class Manifest(
    val runtimeFormat: String,
    val family: String,
    val architecture: String,
    val source: String,
    val config: Map<String, Any?>,
    val maxContext: Long,
    val graph: Graph,
    val weights: String,
    val quantization: String,
    val components: Map<*, *>,
    val rowStores: Map<String, RowStore>,
    val tokenizer: Tokenizer,
    val chatTemplate: String?,
    val files: List<FileEntry>,
    val createdBy: String,
    val audio: Audio?,
) {
    fun fileEntry(path: String): FileEntry = files.first { it.path == path }

    /** Bytes of the prefill/decode graph: every weight a decode step reads (bundle.py graph_bytes). */
    val graphBytes: Long
        get() = if (runtimeFormat == "onnx") files.filter { it.role == "graph" || it.role == "weights" }.sumOf { it.size }
                else graph.mainSection!!.size

    /** Gemma 3n bundles carry the audio sections LiteRT-LM's audio executor loads. */
    val hasAudio: Boolean get() = graph.sections.orEmpty().any { it.modelType?.contains("audio") == true }

    companion object {
        /** Validates `raw` (parsed JSON); `where` names the manifest in messages, as Python does. */
        fun fromJson(raw: Any?, where: String): Manifest {
            if (raw !is Map<*, *>) throw BundleError("$where: not an edgepack manifest (a JSON object is expected)")
            if (raw["format"] != FORMAT_NAME) throw BundleError("$where is not an edgepack manifest")
            val version = raw["schema_version"]
            if (version !is Long || version != SCHEMA_VERSION) {
                throw BundleError("$where: bundle schema ${pyRepr(version)}; this edgepack reads $SCHEMA_VERSION")
            }
            @Suppress("UNCHECKED_CAST")
            val body = (raw as Map<String, Any?>).toMutableMap()
            val graph = body["graph"]
            if (graph is Map<*, *> && "cache_lengths" !in graph && graph["cache_layers"] is List<*>) {
                // written before sliding-window rings: every cache as long as the context
                body["graph"] = graph + ("cache_lengths" to List((graph["cache_layers"] as List<*>).size) { body["max_context"] })
            }
            return Fields(where).manifest(body).also { it.check(where) }
        }
    }

    private fun check(where: String) {
        val g = graph
        fun fail(what: String): Nothing = throw BundleError("$where: $what")
        if (g.cacheLengths.size != g.cacheLayers.size) {
            fail("graph.cache_lengths has ${g.cacheLengths.size} entries for ${g.cacheLayers.size} cache layers")
        }
        if ((g.cacheLengths + g.prefillLengths).any { it > maxContext }) {
            fail("a cache or prefill length exceeds max_context ($maxContext)")
        }
        if (g.groupQuery && runtimeFormat != "onnx") fail("graph.group_query is for ONNX graphs, not $runtimeFormat")
        if (runtimeFormat == "litertlm" && g.prefillLengths.isEmpty()) {
            fail("graph.prefill_lengths is empty (a .litertlm has prefill_<N> graphs)")
        }
        if (runtimeFormat == "litertlm" && g.mainSection == null) fail("graph.sections has no $MAIN_SECTION section")
        if ((listOf(tokenizer.bosId) + tokenizer.stopIds).any { it >= g.vocabSize }) {
            fail("a tokenizer id is outside the vocabulary (${g.vocabSize})")
        }
        val sizes = files.associate { it.path to it.size }
        if (sizes.size != files.size) fail("files lists a path twice")
        val used = linkedMapOf("graph.file" to g.file, "tokenizer.file" to tokenizer.file)
        rowStores.forEach { (name, s) -> used["row_stores.$name.file"] = s.file }
        if (audio != null) {
            used["audio.encoder"] = audio.encoder
            checkAudio(audio, ::fail)
        }
        for ((field, path) in used) if (path !in sizes) fail("$field ${pyRepr(path)} is not listed in files (unverifiable)")
        for (s in g.sections.orEmpty()) {
            if (s.offset + s.size > sizes.getValue(g.file)) {
                fail("graph.sections: a ${s.dataType} section reaches past the end of ${g.file}")
            }
        }
        checkConfig(config, ::fail)
        for ((name, c) in components) {
            val ok = c is Map<*, *> && (c["precisions"] as? List<*>)?.all { it is String } == true &&
                listOf("bytes", "tensors", "exact", "rounded", "float").all { (c[it] as? Long ?: -1) >= 0 }
            if (!ok) fail("precision.components.$name is not a component summary")
        }
        for ((name, s) in rowStores) {
            if (s.dtype != "float32" && (s.block == null || s.scalesOffset == null || s.cols % s.block != 0L)) {
                fail("row_stores.$name: a quantized store needs a block dividing its ${s.cols} columns and a scales_offset")
            }
            val ranges = s.byteRanges.sortedWith(compareBy({ it.first }, { it.second }))
            if (ranges.any { (start, n) -> start + n > sizes.getValue(s.file) }) {
                fail("row_stores.$name reaches past the end of ${s.file}")
            }
            if (ranges.size == 2 && ranges[0].first + ranges[0].second > ranges[1].first) {
                fail("row_stores.$name: its codes and scales overlap")
            }
            if (s.file != g.file && (ranges[0].first != 0L || ranges.sumOf { it.second } != sizes.getValue(s.file))) {
                fail("row_stores.$name does not cover ${s.file} as its layout says")
            }
        }
    }
}

private fun Manifest.checkAudio(a: Audio, fail: (String) -> Nothing) {
    val store = rowStores[a.vocabStore] ?: fail("audio.vocab_store ${pyRepr(a.vocabStore)} is not one of row_stores")
    val hidden = config["hidden_size"]
    if (store.dtype != "float32" || hidden !is Long || store.cols != hidden) {
        fail("audio.vocab_store must be float32 rows of the model's hidden size")
    }
    val vocab = graph.vocabSize
    if (listOf(a.startId, a.softId, a.endId, a.multimodalOffset).any { it >= vocab } ||
        !(a.multimodalOffset <= a.vocabOffset && a.vocabOffset <= a.endId && a.endId < a.vocabOffset + store.rows)) {
        fail("audio's token ids are not inside the vocabulary and its audio rows")
    }
}

private fun checkConfig(config: Map<String, Any?>, fail: (String) -> Nothing) {
    fun positive(v: Any?) = v is Long && v > 0 && v < (1L shl 20)
    for (key in listOf("num_hidden_layers", "hidden_size", "num_attention_heads")) {
        if (!positive(config[key])) fail("model.config.$key must be a positive whole number")
    }
    for (key in listOf("altup_num_inputs", "hidden_size_per_layer_input")) {
        if (key in config && !positive(config[key])) fail("model.config.$key must be a positive whole number")
    }
    val ffn = if ("intermediate_size" in config) config["intermediate_size"] else 0L
    val widths = if (ffn is List<*>) ffn else listOf(ffn)
    if (widths.isEmpty() || !widths.all { it is Long && it >= 0 && it < (1L shl 24) }) {
        fail("model.config.intermediate_size must be whole numbers")
    }
}

/** The typed readers of plan.py's `_read`/`_value`: one line naming the first bad field. */
private class Fields(val where: String) {
    fun fail(what: String): Nothing = throw BundleError("$where: $what")

    fun obj(v: Any?, name: String): Map<*, *> = v as? Map<*, *> ?: fail("${name.ifEmpty { "manifest" }} must be an object")

    fun present(o: Map<*, *>, key: String, prefix: String): Any? =
        if (key in o) o[key] else fail("$prefix$key is missing")

    fun int(v: Any?, name: String, min: Long = Long.MIN_VALUE, max: Long = Long.MAX_VALUE): Long {
        if (v !is Long) fail("$name must be a whole number")
        if (v < min || v > max) fail("$name = $v is out of range")
        return v
    }

    fun optInt(v: Any?, name: String, min: Long): Long? = if (v == null) null else int(v, name, min)

    fun str(v: Any?, name: String, choices: List<String>? = null, path: Boolean = false, hex: Int = 0): String {
        if (v !is String) fail("$name must be a string")
        if (choices != null && v !in choices) fail("$name ${pyRepr(v)} is not one of ${choices.joinToString(", ")}")
        if (path) checkPath(v, name)
        if (hex > 0 && (v.length != hex || v.any { it !in "0123456789abcdef" })) fail("$name must be $hex lowercase hex digits")
        return v
    }

    fun optStr(v: Any?, name: String): String? = if (v == null) null else str(v, name)

    fun bool(v: Any?, name: String): Boolean = v as? Boolean ?: fail("$name must be true or false")

    fun number(v: Any?, name: String): Double = when {
        v is Long -> v.toDouble()
        v is Double && v.isFinite() -> v
        else -> fail("$name must be a finite number")
    }

    fun <T> list(v: Any?, name: String, length: Int? = null, item: (Any?, String) -> T): List<T> {
        if (v !is List<*>) fail("$name must be a list")
        if (length != null && v.size != length) fail("$name must have $length entries")
        return v.mapIndexed { i, x -> item(x, "$name[$i]") }
    }

    /** A plain relative name inside the bundle folder (plan.py `_check_path`). */
    fun checkPath(path: String, name: String) {
        val parts = path.split("/")
        if (path.isEmpty() || path.startsWith("/") || '\\' in path || path.any { it.code < 32 }
            || parts.any { it == ".." || it == "." || it == "" }) {
            fail("$name ${pyRepr(path)} is not a plain relative path inside the bundle")
        }
    }

    fun manifest(raw: Map<String, Any?>): Manifest {
        val runtimeFormat = str(present(raw, "runtime_format", ""), "runtime_format", FORMATS)
        val model = obj(present(raw, "model", ""), "model")
        val family = str(present(model, "family", "model."), "model.family")
        val architecture = str(present(model, "architecture", "model."), "model.architecture")
        val source = str(present(model, "source", "model."), "model.source")
        @Suppress("UNCHECKED_CAST")
        val config = (present(model, "config", "model.") as? Map<String, Any?>) ?: fail("model.config must be an object")
        val maxContext = int(present(raw, "max_context", ""), "max_context", 2, MAX_CONTEXT)
        val graph = graph(obj(present(raw, "graph", ""), "graph"))
        val precision = obj(present(raw, "precision", ""), "precision")
        val weights = str(present(precision, "weights", "precision."), "precision.weights", WEIGHTS)
        val quantization = str(present(precision, "quantization", "precision."), "precision.quantization")
        val components = if ("components" in precision) obj(precision["components"], "precision.components") else emptyMap<String, Any?>()
        val stores = obj(present(raw, "row_stores", ""), "row_stores")
            .entries.associate { (k, v) -> k.toString() to rowStore(obj(v, "row_stores.$k"), "row_stores.$k.") }
        val tok = obj(present(raw, "tokenizer", ""), "tokenizer")
        val tokenizer = Tokenizer(
            str(present(tok, "file", "tokenizer."), "tokenizer.file", path = true),
            int(present(tok, "bos_id", "tokenizer."), "tokenizer.bos_id", 0),
            bool(present(tok, "add_bos", "tokenizer."), "tokenizer.add_bos"),
            list(present(tok, "stop_ids", "tokenizer."), "tokenizer.stop_ids") { x, n -> int(x, n, 0) })
        val chatTemplate = optStr(present(raw, "chat_template", ""), "chat_template")
        val files = list(present(raw, "files", ""), "files") { x, n ->
            val f = obj(x, n)
            FileEntry(str(present(f, "path", "$n."), "$n.path", path = true), str(present(f, "role", "$n."), "$n.role"),
                      int(present(f, "size", "$n."), "$n.size", 0), str(present(f, "sha256", "$n."), "$n.sha256", hex = 64))
        }
        val createdBy = if ("created_by" in raw) str(raw["created_by"], "created_by") else "edgepack"
        val audio = if (raw["audio"] == null) null else audio(obj(raw["audio"], "audio"))
        return Manifest(runtimeFormat, family, architecture, source, config, maxContext, graph, weights, quantization,
                        components, stores, tokenizer, chatTemplate, files, createdBy, audio)
    }

    private fun audio(a: Map<*, *>): Audio {
        val p = "audio."
        fun id(key: String, min: Long = 0, max: Long = Long.MAX_VALUE) = int(present(a, key, p), "$p$key", min, max)
        return Audio(
            str(present(a, "encoder", p), "audio.encoder", path = true),
            str(present(a, "vocab_store", p), "audio.vocab_store"),
            id("soft_tokens", 1, 4096), id("start_id"), id("soft_id"), id("end_id"), id("vocab_offset"),
            id("multimodal_offset"), obj(present(a, "features", p), "audio.features"))
    }

    private fun graph(g: Map<*, *>): Graph {
        val p = "graph."
        return Graph(
            str(present(g, "file", p), "graph.file", path = true),
            list(present(g, "prefill_lengths", p), "graph.prefill_lengths") { x, n -> int(x, n, 1, MAX_CONTEXT) },
            str(present(g, "inputs", p), "graph.inputs", GRAPH_INPUTS),
            list(present(g, "cache_layers", p), "graph.cache_layers") { x, n -> int(x, n, 0, 4096) },
            list(present(g, "cache_lengths", p), "graph.cache_lengths") { x, n -> int(x, n, 1, MAX_CONTEXT) },
            int(present(g, "num_kv_heads", p), "graph.num_kv_heads", 1, 4096),
            int(present(g, "head_dim", p), "graph.head_dim", 1, 65536),
            int(present(g, "vocab_size", p), "graph.vocab_size", 1, 1L shl 24),
            if (g["sections"] == null) null else list(g["sections"], "graph.sections") { x, n ->
                val s = obj(x, n)
                Section(str(present(s, "data_type", "$n."), "$n.data_type"), optStr(present(s, "model_type", "$n."), "$n.model_type"),
                        int(present(s, "offset", "$n."), "$n.offset", 0), int(present(s, "size", "$n."), "$n.size", 0))
            },
            if ("group_query" in g) bool(g["group_query"], "graph.group_query") else false)
    }

    private fun rowStore(s: Map<*, *>, p: String): RowStore = RowStore(
        str(present(s, "file", p), "${p}file", path = true),
        int(present(s, "offset", p), "${p}offset", 0),
        list(present(s, "shape", p), "${p}shape", length = 2) { x, n -> int(x, n, 1, 1L shl 32) },
        str(present(s, "dtype", p), "${p}dtype", STORE_DTYPES.keys.toList()),
        if ("scale" in s) number(s["scale"], "${p}scale") else 1.0,
        optInt(s["block"], "${p}block", 1),
        optInt(s["scales_offset"], "${p}scales_offset", 0))
}

/** Python's repr() of a parsed JSON value, for messages that quote a value as plan.py does. */
fun pyRepr(v: Any?): String = when (v) {
    null -> "None"
    is Boolean -> if (v) "True" else "False"
    is String -> {
        val quote = if ('\'' in v && '"' !in v) '"' else '\''
        buildString {
            append(quote)
            for (c in v) when {
                c == '\\' -> append("\\\\")
                c == quote -> append("\\").append(c)
                c == '\n' -> append("\\n")
                c == '\r' -> append("\\r")
                c == '\t' -> append("\\t")
                c.code < 32 || c.code == 127 -> append("\\x%02x".format(c.code))
                else -> append(c)
            }
            append(quote)
        }
    }
    is List<*> -> v.joinToString(", ", "[", "]") { pyRepr(it) }
    is Map<*, *> -> v.entries.joinToString(", ", "{", "}") { "${pyRepr(it.key)}: ${pyRepr(it.value)}" }
    else -> v.toString()
}
