package dev.edgepack.core

import java.io.File
import java.io.FileInputStream
import java.io.FileOutputStream
import java.io.IOException
import java.io.InputStream
import java.net.HttpURLConnection
import java.net.URI
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.security.MessageDigest

/** Where a bundle comes from: a folder (a USB copy, the app's assets unpacked) or a URL. */
interface BundleSource {
    /** manifest.json's bytes. */
    fun manifest(): ByteArray

    /** The file `name` from byte `offset` on; a source that can't start there returns the
     * whole file and says so with `fromStart`. */
    fun open(name: String, offset: Long): Opened

    class Opened(val stream: InputStream, val fromStart: Boolean)
}

class FolderSource(private val folder: File) : BundleSource {
    override fun manifest(): ByteArray = File(folder, MANIFEST).readBytes()

    override fun open(name: String, offset: Long): BundleSource.Opened {
        val input = FileInputStream(File(folder, name))
        input.channel.position(offset)
        return BundleSource.Opened(input, fromStart = false)
    }
}

/** `base` + file name over HTTP(S), resuming with a Range request. */
class HttpSource(base: String, private val timeoutMs: Int = 30_000) : BundleSource {
    private val base = if (base.endsWith("/")) base else "$base/"

    private fun connect(name: String, offset: Long): HttpURLConnection {
        val c = URI(base + name).toURL().openConnection() as HttpURLConnection
        c.connectTimeout = timeoutMs
        c.readTimeout = timeoutMs
        if (offset > 0) c.setRequestProperty("Range", "bytes=$offset-")
        val code = c.responseCode
        if (code != 200 && code != 206) {
            c.disconnect()
            throw IOException("GET ${base + name}: HTTP $code")
        }
        return c
    }

    override fun manifest(): ByteArray = connect(MANIFEST, 0).inputStream.use { it.readNBytes(64 shl 20) }

    override fun open(name: String, offset: Long): BundleSource.Opened {
        val c = connect(name, offset)
        return BundleSource.Opened(c.inputStream, fromStart = offset > 0 && c.responseCode != 206)
    }
}

/**
 * Copies or downloads a bundle into app storage: resumable (an interrupted install keeps what it
 * has in a staging folder beside the target, and the next install continues each file where it
 * stopped), verified (every file's size and sha256 as it streams, and the finished folder once
 * more through [Bundle.verify]) and atomic (the target folder appears only by renaming a complete,
 * verified staging folder: a half-copied bundle never looks complete).
 */
object Installer {
    data class Progress(val file: String, val bytesDone: Long, val bytesTotal: Long)

    fun stagingFor(target: File): File = File(target.absoluteFile.parentFile, ".${target.name}.partial")

    fun install(source: BundleSource, target: File, progress: (Progress) -> Unit = {}): Bundle {
        val t = target.absoluteFile
        if (t.exists()) throw BundleError("$t already exists")
        val raw = source.manifest()
        val manifest = Manifest.fromJson(parseJson(raw, "the source's $MANIFEST"), "the source's $MANIFEST")
        if (manifest.files.any { it.path == MANIFEST }) { // it would replace the manifest checked here
            throw BundleError("the source's $MANIFEST lists $MANIFEST among its files")
        }
        val staging = stagingFor(t)
        val kept = File(staging, MANIFEST)
        if (staging.exists() && !(kept.isFile && kept.readBytes().contentEquals(raw))) {
            staging.deleteRecursively() // another bundle (or another version of it) was being installed
        }
        staging.mkdirs()
        val total = manifest.files.sumOf { it.size }
        val have = manifest.files.sumOf { minOf(File(staging, it.path).length(), it.size) }
        val free = staging.usableSpace
        if (total - have > free) { // a manifest is untrusted: it must not fill the phone's storage
            throw BundleError("the bundle needs ${mib(total - have)} MiB more, and ${t.parentFile} has ${mib(free)} MiB free")
        }
        writeDurably(kept, raw) // first: what a later install compares to resume this one
        var done = 0L
        for (entry in manifest.files) {
            val base = done
            fetch(source, entry, File(staging, entry.path)) { n -> progress(Progress(entry.path, base + n, total)) }
            done += entry.size
        }
        val bundle = Bundle(staging)
        bundle.verify(checksums = false) // sizes and layout once more; every sha256 was checked while streaming
        Files.move(staging.toPath(), t.toPath(), StandardCopyOption.ATOMIC_MOVE)
        return Bundle(t)
    }

    /** One file into `dest`, continuing a partial copy; its sha256 covers the kept part too. */
    private fun fetch(source: BundleSource, entry: FileEntry, dest: File, progress: (Long) -> Unit) {
        dest.parentFile.mkdirs()
        if (dest.length() > entry.size) dest.delete()
        val digest = MessageDigest.getInstance("SHA-256")
        var have = if (dest.exists()) dest.length() else 0L
        if (have > 0) FileInputStream(dest).use { digestAll(it, digest) }
        if (have < entry.size) {
            val opened = source.open(entry.path, have)
            if (opened.fromStart) { // the source can't resume: start this file again
                digest.reset()
                have = 0
            }
            opened.stream.use { input ->
                FileOutputStream(dest, have > 0).use { out ->
                    val buf = ByteArray(1 shl 20)
                    while (have < entry.size) {
                        val k = input.read(buf, 0, minOf(buf.size.toLong(), entry.size - have).toInt())
                        if (k < 0) break
                        out.write(buf, 0, k)
                        digest.update(buf, 0, k)
                        have += k
                        progress(have)
                    }
                    out.fd.sync()
                }
            }
        }
        if (have != entry.size) throw IOException("${entry.path}: the source ended at $have of ${entry.size} bytes")
        if (hex(digest.digest()) != entry.sha256) {
            dest.delete() // not worth resuming: start it again next time
            throw BundleError("bundle file $dest fails its sha256 check (altered or corrupt)")
        }
    }

    private fun writeDurably(file: File, bytes: ByteArray) {
        FileOutputStream(file).use { it.write(bytes); it.fd.sync() }
    }

    private fun parseJson(raw: ByteArray, what: String): Any? = try {
        Json.parse(raw.toString(Charsets.UTF_8))
    } catch (e: JsonError) {
        throw BundleError("$what is corrupt: ${e.message}")
    }
}
