package dev.edgepack.core

import java.io.ByteArrayInputStream
import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.file.Files
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

class JsonTest {
    @Test
    fun `reads what a manifest holds`() {
        val v = Json.parse("""{"a": [1, -2.5e3, true, null, "x\"\u00e9\n"], "b": {}}""") as Map<*, *>
        assertEquals(listOf(1L, -2500.0, true, null, "x\"\u00e9\n"), v["a"])
        assertEquals(emptyMap<String, Any?>(), v["b"])
    }

    @Test
    fun `refuses malformed and hostile documents with an offset`() {
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "01", "\"a\u0001\"", "[1] 2", "\"\\uzzzz\"", "nul", "-", "1e")) {
            assertThrows(JsonError::class.java, { Json.parse(bad) }, bad)
        }
        val deep = "[".repeat(100) + "]".repeat(100)
        assertTrue(assertThrows(JsonError::class.java) { Json.parse(deep) }.message!!.startsWith("nesting deeper than 64"))
        assertThrows(JsonError::class.java) { Json.parse("99999999999999999999") }
    }
}

class ManifestTest {
    @TempDir lateinit var tmp: File

    private fun edit(folder: File, from: String, to: String) {
        val f = File(folder, MANIFEST)
        val text = f.readText()
        assertTrue(from in text, from)
        f.writeText(text.replaceFirst(from, to))
    }

    @Test
    fun `a bundle the tests wrote verifies`() {
        val b = Bundle(TestBundles.sample(File(tmp, "b")))
        b.verify()
        assertEquals("onnx", b.manifest.runtimeFormat)
        assertEquals(3_003_000L, b.manifest.graphBytes)
    }

    @Test
    fun `an unknown schema version is refused by number`() {
        val folder = TestBundles.write(File(tmp, "b"), mapOf("tokenizer.json" to ByteArray(1), "model.onnx" to ByteArray(1)), schema = 2)
        val e = assertThrows(BundleError::class.java) { Bundle(folder) }
        assertEquals("${File(folder, MANIFEST)}: bundle schema 2; this edgepack reads 1", e.message)
    }

    @Test
    fun `paths stay plain and inside the bundle`() {
        for (bad in listOf("../model.onnx", "/etc/passwd", "a//b", "./a", "a\\\\b")) {
            val folder = TestBundles.sample(File(tmp, "p${bad.hashCode()}"))
            edit(folder, "\"path\": \"model.onnx\"", "\"path\": \"$bad\"")
            val e = assertThrows(BundleError::class.java) { Bundle(folder) }
            assertTrue(e.message!!.endsWith("is not a plain relative path inside the bundle"), e.message)
        }
    }

    @Test
    fun `the first bad field is named`() {
        val folder = TestBundles.sample(File(tmp, "b"))
        edit(folder, "\"max_context\": 64", "\"max_context\": 1")
        assertEquals("${File(folder, MANIFEST)}: max_context = 1 is out of range",
                     assertThrows(BundleError::class.java) { Bundle(folder) }.message)
        edit(folder, "\"max_context\": 1", "\"max_context\": 64")
        edit(folder, "\"vocab_size\": 1000", "\"vocab_size\": 2")
        assertEquals("${File(folder, MANIFEST)}: a tokenizer id is outside the vocabulary (2)",
                     assertThrows(BundleError::class.java) { Bundle(folder) }.message)
    }

    @Test
    fun `Python's repr is what messages quote`() {
        assertEquals("'a'", pyRepr("a"))
        assertEquals("\"it's\"", pyRepr("it's"))
        assertEquals("'\\x1b[31m'", pyRepr("\u001b[31m"))
        assertEquals("[None, True, 1.5, {'a': 1}]", pyRepr(listOf(null, true, 1.5, mapOf("a" to 1L))))
    }
}

class VerifyTest {
    @TempDir lateinit var tmp: File

    @Test
    fun `a missing, truncated or altered file fails with edgepack's message`() {
        val folder = TestBundles.sample(File(tmp, "b"))
        val data = File(folder, "model.onnx.data")
        RandomAccessFile(data, "rw").use { it.setLength(2_999_999) }
        assertEquals("bundle file $data is 2999999 bytes, manifest says 3000000 (truncated?)",
                     assertThrows(BundleError::class.java) { Bundle(folder).verify() }.message)
        RandomAccessFile(data, "rw").use { it.setLength(3_000_000) } // the last byte was (2999999*31+5) % 256
        assertEquals("bundle file $data fails its sha256 check (altered or corrupt)",
                     assertThrows(BundleError::class.java) { Bundle(folder).verify() }.message)
        assertTrue(data.delete())
        assertEquals("bundle file missing: $data", assertThrows(BundleError::class.java) { Bundle(folder).verify() }.message)
    }

    @Test
    fun `sizes alone are checked without checksums, and progress counts every byte`() {
        val folder = TestBundles.sample(File(tmp, "b"))
        var last = 0L to 0L
        Bundle(folder).verify { done, total -> last = done to total }
        assertEquals(last.second, last.first)
        val data = File(folder, "model.onnx.data")
        data.writeBytes(data.readBytes().also { it[0] = (it[0] + 1).toByte() })
        Bundle(folder).verify(checksums = false)
    }

    @Test
    fun `a file linked from outside the bundle is refused`() {
        val folder = TestBundles.sample(File(tmp, "b"))
        val outside = File(tmp, "secret").apply { writeText("{\"model\": {}}") }
        val tok = File(folder, "tokenizer.json")
        tok.delete()
        Files.createSymbolicLink(tok.toPath(), outside.toPath())
        assertTrue(assertThrows(BundleError::class.java) { Bundle(folder).verify() }.message!!.contains("points outside the bundle"))
    }
}

class FootprintTest {
    @Test
    fun `MiB figures round half to even on the exact value, as Python's format does`() {
        assertEquals("0.2", mib(Footprint.MiB / 4))
        assertEquals("0.8", mib(Footprint.MiB * 3 / 4))
        assertEquals("1,234.5", mib(Footprint.MiB * 12345 / 10 + 1))
        assertEquals("0.0", mib(0))
    }

    @Test
    fun `a device's budget is its RAM less the OS reserve`() {
        val d = Footprint.devices("""{"devices": {"pi4-2gb": {"ram_mib": 2048, "os_reserve_mib": 300}}}""")
        assertEquals(1748L * Footprint.MiB, Footprint.deviceBudget(d.getValue("pi4-2gb")))
    }
}

class WavTest {
    @Test
    fun `16 kHz mono 16-bit PCM with a canonical header`() {
        val wav = Wav.pcm16(shortArrayOf(0, 1, -1, Short.MAX_VALUE, Short.MIN_VALUE))
        val b = ByteBuffer.wrap(wav).order(ByteOrder.LITTLE_ENDIAN)
        assertEquals("RIFF", String(wav, 0, 4))
        assertEquals(wav.size - 8, b.getInt(4))
        assertEquals("WAVEfmt ", String(wav, 8, 8))
        assertEquals(1, b.getShort(20).toInt()) // PCM
        assertEquals(1, b.getShort(22).toInt()) // mono
        assertEquals(16000, b.getInt(24))
        assertEquals(32000, b.getInt(28))
        assertEquals(16, b.getShort(34).toInt())
        assertEquals(10, b.getInt(40))
        assertEquals(Short.MIN_VALUE, b.getShort(52))
    }

    @Test
    fun `floats are clipped and rounded half away from zero`() {
        assertEquals(32767, Wav.toPcm16(1f).toInt())
        assertEquals(-32767, Wav.toPcm16(-7f).toInt())
        assertEquals(16384, Wav.toPcm16(0.5f).toInt()) // 16383.5
        assertEquals(-16384, Wav.toPcm16(-0.5f).toInt())
        assertEquals(0, Wav.toPcm16(Float.NaN).toInt())
    }
}

class StatsTest {
    @Test
    fun `time to first token and decode speed from the stream's timestamps`() {
        var now = 0L
        val s = GenerationStats { now }
        s.started()
        assertNull(s.timeToFirstToken)
        now = 500_000_000L; s.token()
        repeat(10) { now += 100_000_000L; s.token() }
        assertEquals(0.5, s.timeToFirstToken!!, 1e-9)
        assertEquals(10.0, s.decodeTokensPerSecond!!, 1e-9)
        assertEquals(11, s.tokens)
        assertFalse(s.summary().isEmpty())
    }

    @Test
    fun `sha256 of a stream equals the digest of its bytes`() {
        val bytes = ByteArray(3_000_001) { (it % 251).toByte() }
        assertEquals(TestBundles.hex(bytes), sha256(ByteArrayInputStream(bytes)))
    }
}

class MemoryTest {
    @Test
    fun `resident memory is this process's VmRSS`() {
        val rss = residentBytes()!!
        assertTrue(rss > 10L shl 20 && rss < 64L shl 30, "$rss")
    }
}
