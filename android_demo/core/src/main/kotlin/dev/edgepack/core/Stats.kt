package dev.edgepack.core

import java.io.File

/**
 * Time to first token and decode speed of one streamed answer. LiteRT-LM's Conversation streams a
 * message per decode step, so the chunks counted here are tokens; [tokens] can be set from an
 * engine's own count where there is one.
 */
class GenerationStats(private val clock: () -> Long = System::nanoTime) {
    private var start = 0L
    private var first = 0L
    private var last = 0L
    var tokens = 0
        private set

    fun started() {
        start = clock(); first = 0; last = 0; tokens = 0
    }

    fun token(count: Int = 1) {
        val now = clock()
        if (tokens == 0) first = now
        last = now
        tokens += count
    }

    /** Seconds from the request to the first token, null before it. */
    val timeToFirstToken: Double? get() = if (tokens == 0) null else (first - start) / 1e9

    /** Tokens after the first over the time they took (the first one is the prefill's). */
    val decodeTokensPerSecond: Double?
        get() = if (tokens < 2 || last == first) null else (tokens - 1) / ((last - first) / 1e9)

    fun summary(): String {
        val ttft = timeToFirstToken?.let { "%.2f s".format(it) } ?: "-"
        val tps = decodeTokensPerSecond?.let { "%.1f tok/s".format(it) } ?: "-"
        return "first token in $ttft, decode $tps ($tokens tokens)"
    }
}

/** This process's resident memory (VmRSS in /proc/self/status: Linux and Android alike), or null. */
fun residentBytes(status: File = File("/proc/self/status")): Long? = try {
    status.readLines().firstOrNull { it.startsWith("VmRSS:") }?.split(Regex("\\s+"))?.get(1)?.toLong()?.times(1024)
} catch (e: Exception) {
    null
}
