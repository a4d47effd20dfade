package dev.edgepack.demo

import android.content.Context
import android.net.Uri
import androidx.documentfile.provider.DocumentFile
import dev.edgepack.core.BundleSource
import dev.edgepack.core.MANIFEST
import java.io.FileNotFoundException
import java.io.InputStream

/** Where the core's Installer reads a bundle from on a phone: the APK's assets, or a folder the
 * user picked with the system file picker (a USB drive, Downloads, a SD card). */

/** assets/bundle, placed there at build time by `./gradlew :app:exportBundle`. */
class AssetSource(private val context: Context, private val folder: String = "bundle") : BundleSource {
    fun exists(): Boolean = try {
        context.assets.open("$folder/$MANIFEST").close(); true
    } catch (e: FileNotFoundException) {
        false
    }

    override fun manifest(): ByteArray = context.assets.open("$folder/$MANIFEST").use { it.readBytes() }

    override fun open(name: String, offset: Long): BundleSource.Opened =
        BundleSource.Opened(context.assets.open("$folder/$name").also { skipFully(it, offset) }, fromStart = false)
}

/** A folder picked with ACTION_OPEN_DOCUMENT_TREE: files found by name under the tree. */
class TreeSource(private val context: Context, tree: Uri) : BundleSource {
    private val root = DocumentFile.fromTreeUri(context, tree) ?: throw FileNotFoundException("$tree is not a folder")

    private fun find(name: String): DocumentFile =
        name.split("/").fold(root) { dir, part -> dir.findFile(part) ?: throw FileNotFoundException("$name is not in the picked folder") }

    private fun read(name: String): InputStream =
        context.contentResolver.openInputStream(find(name).uri) ?: throw FileNotFoundException(name)

    override fun manifest(): ByteArray = read(MANIFEST).use { it.readBytes() }

    override fun open(name: String, offset: Long): BundleSource.Opened =
        BundleSource.Opened(read(name).also { skipFully(it, offset) }, fromStart = false)
}

private fun skipFully(input: InputStream, n: Long) {
    var left = n
    while (left > 0) {
        val k = input.skip(left)
        if (k <= 0) throw FileNotFoundException("the source ended before byte $n")
        left -= k
    }
}
