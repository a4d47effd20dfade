package dev.edgepack.core

import com.sun.net.httpserver.HttpServer
import java.io.File
import java.io.IOException
import java.net.InetSocketAddress
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

/** A real HTTP server on loopback (the JDK's): byte ranges, and a connection cut part-way. */
class InstallTest {
    @TempDir lateinit var tmp: File
    private lateinit var server: HttpServer
    private lateinit var served: File
    private var cutAfter = Long.MAX_VALUE // bytes a response sends before the connection drops
    private var honourRange = true
    private var bytesSent = 0L

    @BeforeEach
    fun start() {
        served = TestBundles.sample(File(tmp, "served"))
        server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0)
        server.createContext("/") { ex ->
            val f = File(served, ex.requestURI.path.removePrefix("/"))
            if (!f.isFile) { ex.sendResponseHeaders(404, -1); ex.close(); return@createContext }
            val range = ex.requestHeaders.getFirst("Range")?.takeIf { honourRange }
            val from = range?.removePrefix("bytes=")?.removeSuffix("-")?.toLong() ?: 0L
            val body = f.readBytes().copyOfRange(from.toInt(), f.length().toInt())
            if (range != null) ex.responseHeaders.add("Content-Range", "bytes $from-${f.length() - 1}/${f.length()}")
            ex.sendResponseHeaders(if (range != null) 206 else 200, body.size.toLong())
            val n = minOf(body.size.toLong(), cutAfter).toInt()
            try {
                ex.responseBody.write(body, 0, n)
                bytesSent += n
            } finally {
                if (n < body.size) ex.httpContext.server.let { ex.close() } else ex.close()
            }
        }
        server.start()
    }

    @AfterEach
    fun stop() = server.stop(0)

    private val url get() = "http://127.0.0.1:${server.address.port}/"

    @Test
    fun `a download cut part-way resumes where it stopped and appears only when complete`() {
        val target = File(tmp, "app/bundle")
        cutAfter = 1_000_000
        assertThrows(IOException::class.java) { Installer.install(HttpSource(url), target) }
        assertFalse(target.exists()) // a half-copied bundle never looks complete
        assertTrue(Installer.stagingFor(target).isDirectory)
        cutAfter = Long.MAX_VALUE
        bytesSent = 0
        val b = Installer.install(HttpSource(url), target)
        b.verify()
        val total = served.listFiles()!!.filter { it.name != MANIFEST }.sumOf { it.length() }
        assertTrue(bytesSent < total, "resumed: $bytesSent of $total bytes sent again")
        assertFalse(Installer.stagingFor(target).exists())
    }

    @Test
    fun `a server without ranges restarts the file and still ends verified`() {
        val target = File(tmp, "app/bundle")
        cutAfter = 1_000_000
        assertThrows(IOException::class.java) { Installer.install(HttpSource(url), target) }
        cutAfter = Long.MAX_VALUE
        honourRange = false
        Installer.install(HttpSource(url), target).verify()
    }

    @Test
    fun `an altered source file is refused and nothing is installed`() {
        val data = File(served, "model.onnx.data")
        data.writeBytes(data.readBytes().also { it[12345] = (it[12345] + 1).toByte() })
        val target = File(tmp, "app/bundle")
        val e = assertThrows(BundleError::class.java) { Installer.install(FolderSource(served), target) }
        assertTrue(e.message!!.endsWith("model.onnx.data fails its sha256 check (altered or corrupt)"), e.message)
        assertFalse(target.exists())
    }

    @Test
    fun `a folder copy equals its source and reports progress to the last byte`() {
        val target = File(tmp, "copy")
        var last: Installer.Progress? = null
        Installer.install(FolderSource(served), target) { last = it }.verify()
        for (f in served.listFiles()!!) assertTrue(f.readBytes().contentEquals(File(target, f.name).readBytes()), f.name)
        assertEquals(last!!.bytesTotal, last!!.bytesDone)
        assertThrows(BundleError::class.java) { Installer.install(FolderSource(served), target) } // never over a bundle
    }

    @Test
    fun `a bundle larger than the free storage is refused before anything is written`() {
        val m = File(served, MANIFEST)
        m.writeText(m.readText().replace("\"size\": 3000000", "\"size\": 1125899906842624")) // 1 PiB
        val target = File(tmp, "app/bundle")
        val e = assertThrows(BundleError::class.java) { Installer.install(HttpSource(url), target) }
        assertTrue(e.message!!.startsWith("the bundle needs 1,073,741,824.0 MiB more"), e.message)
        assertFalse(target.exists())
        assertEquals(m.length(), bytesSent) // the manifest, nothing else
    }

    @Test
    fun `a manifest that lists itself is refused`() {
        val m = File(served, MANIFEST)
        m.writeText(m.readText().replace("\"path\": \"model.onnx.data\"", "\"path\": \"manifest.json\""))
        val e = assertThrows(BundleError::class.java) { Installer.install(FolderSource(served), File(tmp, "b")) }
        assertEquals("the source's manifest.json lists manifest.json among its files", e.message)
    }

    @Test
    fun `a staging folder of another bundle is not resumed`() {
        val target = File(tmp, "app/bundle")
        val staging = Installer.stagingFor(target).apply { mkdirs() }
        File(staging, MANIFEST).writeText("{}")
        File(staging, "model.onnx.data").writeBytes(ByteArray(10)) // would corrupt a resumed copy
        Installer.install(FolderSource(served), target).verify()
    }
}
