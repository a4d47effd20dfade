package dev.edgepack.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.system.exitProcess

/**
 * The core's checks from a shell, one JSON line per answer: what tests/test_android_core.py runs
 * against the Python side, and a way to check a bundle with the same code the app runs.
 *
 *     java -jar core.jar verify FOLDER...            every file's size and sha256
 *     java -jar core.jar manifest FILE...            a manifest.json's validation alone
 *     java -jar core.jar verdict FOLDER DEVICES.json the memory verdict, per engine and device
 *     java -jar core.jar wav FLOATS.f32 OUT.wav      16 kHz mono PCM16 from float32 samples
 *     java -jar core.jar install SOURCE TARGET       copy (folder) or download (http[s]://) a bundle
 */
fun main(args: Array<String>) {
    val command = args.firstOrNull()
    val rest = args.drop(1)
    try {
        when (command) {
            "verify" -> rest.forEach { println(outcome(it) { Bundle(File(it)).verify() }) }
            "manifest" -> rest.forEach { path ->
                println(outcome(path) { Manifest.fromJson(Json.parse(File(path).readText()), path) })
            }
            "verdict" -> verdicts(Bundle(File(rest[0])).manifest, Footprint.devices(File(rest[1]).readText()))
            "wav" -> {
                val raw = ByteBuffer.wrap(File(rest[0]).readBytes()).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
                File(rest[1]).writeBytes(Wav.pcm16(FloatArray(raw.remaining()).also { raw.get(it) }))
            }
            "install" -> {
                val source = if (rest[0].startsWith("http://") || rest[0].startsWith("https://")) HttpSource(rest[0])
                             else FolderSource(File(rest[0]))
                Installer.install(source, File(rest[1]))
                println(outcome(rest[1]) {})
            }
            else -> {
                System.err.println("usage: core verify|manifest|verdict|wav|install ... (see Cli.kt)")
                exitProcess(2)
            }
        }
    } catch (e: BundleError) {
        System.err.println("edgepack: error: ${e.message}")
        exitProcess(2)
    }
}

private fun outcome(what: String, check: () -> Unit): String = try {
    check()
    """{"path": ${quote(what)}, "ok": true}"""
} catch (e: BundleError) {
    """{"path": ${quote(what)}, "ok": false, "error": ${quote(e.message ?: "")}}"""
}

private fun verdicts(m: Manifest, devices: Map<String, Device>) {
    for (engine in Footprint.WEIGHT_COPIES.keys) {
        val p = Footprint.predict(m, engine)
        val parts = p.parts.entries.joinToString(", ") { "${quote(it.key)}: ${it.value}" }
        val lines = p.lines().joinToString(", ") { quote(it) }
        for ((name, d) in devices) {
            val v = Verdict(p, Footprint.deviceBudget(d))
            println("""{"engine": ${quote(engine)}, "device": ${quote(name)}, "peak": ${p.peak}, "parse_peak": ${p.parsePeak}, """ +
                    """"parts": {$parts}, "budget": ${v.budget}, "fits": ${v.fits}, "lines": [$lines]}""")
        }
    }
}

fun quote(s: String): String = buildString {
    append('"')
    for (c in s) when {
        c == '"' -> append("\\\"")
        c == '\\' -> append("\\\\")
        c == '\n' -> append("\\n")
        c.code < 32 -> append("\\u%04x".format(c.code))
        else -> append(c)
    }
    append('"')
}
