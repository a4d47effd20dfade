package dev.edgepack.core

import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.io.InputStream
import java.io.RandomAccessFile
import java.nio.file.Files
import java.nio.file.LinkOption
import java.nio.file.NoSuchFileException
import java.security.MessageDigest
import java.util.zip.Inflater
import java.util.zip.InflaterInputStream

private const val MAX_MANIFEST_BYTES = 64L shl 20 // a full-size Gemma 3n manifest is about 30 KB
private const val CHUNK = 1 shl 20

/**
 * A bundle folder on disk, its manifest validated (edgepack/bundle.py `Bundle`). [verify] checks
 * every listed file's size and sha256 by streaming it (a phone never holds a 3 GB file twice), and
 * fails with the Python side's messages.
 */
class Bundle(folder: File) {
    val path: File = folder
    val manifest: Manifest

    init {
        val mpath = File(path, MANIFEST)
        if (!path.exists()) throw BundleError("bundle not found: $path")
        if (!mpath.exists()) throw BundleError("$path is not an edgepack bundle: no $MANIFEST")
        if (!mpath.isFile) throw BundleError("$mpath is not a file")
        val raw = readManifestBytes(mpath)
        val parsed = try {
            Json.parse(raw.toString(Charsets.UTF_8))
        } catch (e: JsonError) {
            throw BundleError("$mpath is corrupt: ${e.message}")
        }
        manifest = Manifest.fromJson(parsed, mpath.path)
    }

    /** A listed file, kept inside the folder once symlinks are resolved, and a regular file. */
    fun file(name: String): File {
        if (manifest.files.none { it.path == name }) throw BundleError("$path: ${pyRepr(name)} is not one of the bundle's listed files")
        val p = File(path, name)
        val real = try {
            p.toPath().toRealPath()
        } catch (e: NoSuchFileException) {
            throw BundleError("bundle file missing: $p")
        } catch (e: IOException) {
            throw BundleError("bundle file $p cannot be resolved: ${e.message}")
        }
        if (!real.startsWith(path.toPath().toRealPath())) throw BundleError("bundle file $p points outside the bundle (to $real)")
        if (!Files.isRegularFile(real, LinkOption.NOFOLLOW_LINKS)) throw BundleError("bundle file $p is not a regular file")
        return p
    }

    /**
     * Sizes, then (with [checksums]) sha256 of every file, in the manifest's order; for a
     * `.litertlm`, the tokenizer LiteRT-LM reads must be tokenizer.json. [progress] gets the bytes
     * hashed so far and the total.
     */
    fun verify(checksums: Boolean = true, progress: (Long, Long) -> Unit = { _, _ -> }) {
        val total = manifest.files.sumOf { it.size }
        var done = 0L
        for (entry in manifest.files) {
            val p = file(entry.path)
            val size = p.length()
            if (size != entry.size) throw BundleError("bundle file $p is $size bytes, manifest says ${entry.size} (truncated?)")
            if (checksums) {
                val base = done
                val digest = FileInputStream(p).use { sha256(it) { n -> progress(base + n, total) } }
                if (digest != entry.sha256) throw BundleError("bundle file $p fails its sha256 check (altered or corrupt)")
            }
            done += entry.size
        }
        if (checksums && manifest.runtimeFormat == "litertlm") checkEmbeddedTokenizer()
    }

    /**
     * LiteRT-LM reads the tokenizer inside the .litertlm (8 bytes of its size, then zlib), edgepack's
     * runtime tokenizer.json: both must be the same bytes. Compared as two streams.
     */
    private fun checkEmbeddedTokenizer() {
        val g = manifest.graph
        val section = g.sections.orEmpty().firstOrNull { it.dataType == "HF_Tokenizer_Zlib" }
            ?: throw BundleError("$path: the .litertlm has no HF_Tokenizer_Zlib section")
        val ours = file(manifest.tokenizer.file)
        val same = RandomAccessFile(file(g.file), "r").use { raf ->
            val header = ByteArray(8)
            raf.seek(section.offset)
            raf.readFully(header)
            val declared = (0 until 8).fold(0L) { acc, i -> acc or ((header[i].toLong() and 0xff) shl (8 * i)) }
            val blob = SectionStream(raf, section.offset + 8, section.size - 8)
            declared == ours.length() && try {
                InflaterInputStream(blob, Inflater(), CHUNK).use { theirs -> FileInputStream(ours).use { sameBytes(it, theirs) } }
            } catch (e: IOException) {
                false // not zlib, or cut short
            }
        }
        if (!same) {
            throw BundleError("$path: the tokenizer inside ${g.file} is not ${manifest.tokenizer.file} " +
                              "(LiteRT-LM and edgepack would tokenize differently)")
        }
    }
}

private fun readManifestBytes(mpath: File): ByteArray {
    if (!Files.isRegularFile(mpath.toPath())) throw BundleError("$mpath is not a regular file")
    FileInputStream(mpath).use { input ->
        val data = input.readNBytes((MAX_MANIFEST_BYTES + 1).toInt())
        if (data.size > MAX_MANIFEST_BYTES) throw BundleError("$mpath is over ${MAX_MANIFEST_BYTES shr 20} MiB: not a manifest edgepack wrote")
        return data
    }
}

/** Lowercase hex sha256 of a stream, read a chunk at a time; [progress] gets the bytes read. */
fun sha256(input: InputStream, progress: (Long) -> Unit = {}): String =
    hex(MessageDigest.getInstance("SHA-256").also { digestAll(input, it, progress) }.digest())

/** Feeds the rest of a stream into `digest`, a chunk at a time. */
fun digestAll(input: InputStream, digest: MessageDigest, progress: (Long) -> Unit = {}) {
    val buf = ByteArray(CHUNK)
    var n = 0L
    while (true) {
        val k = input.read(buf)
        if (k < 0) return
        digest.update(buf, 0, k)
        n += k
        progress(n)
    }
}

fun hex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it) }

private fun sameBytes(a: InputStream, b: InputStream): Boolean {
    val x = ByteArray(CHUNK)
    val y = ByteArray(CHUNK)
    while (true) {
        val k = a.readNBytes(x, 0, CHUNK)
        val m = b.readNBytes(y, 0, if (k == 0) 1 else k) // at the end, one byte more must not come
        if (k == 0) return m == 0
        if (m != k || !x.copyOf(k).contentEquals(y.copyOf(m))) return false
    }
}

/** A window of a file as a stream: a section of a .litertlm, never read past its end. */
private class SectionStream(val raf: RandomAccessFile, var pos: Long, var left: Long) : InputStream() {
    override fun read(): Int {
        val one = ByteArray(1)
        return if (read(one, 0, 1) < 0) -1 else one[0].toInt() and 0xff
    }

    override fun read(b: ByteArray, off: Int, len: Int): Int {
        if (left <= 0) return -1
        raf.seek(pos)
        val k = raf.read(b, off, minOf(len.toLong(), left).toInt())
        if (k < 0) return -1
        pos += k
        left -= k
        return k
    }
}
