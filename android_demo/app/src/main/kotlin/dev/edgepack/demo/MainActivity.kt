package dev.edgepack.demo

import android.app.ActivityManager
import android.content.pm.PackageManager
import android.net.Uri
import android.os.Bundle
import android.view.View
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.ContextCompat
import androidx.lifecycle.lifecycleScope
import com.google.ai.edge.litertlm.Contents
import com.google.ai.edge.litertlm.Conversation
import com.google.ai.edge.litertlm.Engine
import dev.edgepack.core.BundleSource
import dev.edgepack.core.Footprint
import dev.edgepack.core.GenerationStats
import dev.edgepack.core.HttpSource
import dev.edgepack.core.Installer
import dev.edgepack.core.Manifest
import dev.edgepack.core.Verdict
import dev.edgepack.core.mib
import dev.edgepack.core.residentBytes
import java.io.File
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import dev.edgepack.core.Bundle as EdgepackBundle

/**
 * One screen: get a bundle (from the APK's assets, a picked folder or a URL) into app storage,
 * verify it and check that it fits before anything loads, then chat with it through LiteRT-LM's
 * Conversation on the CPU backend, streaming, with time to first token, tok/s and memory shown.
 * Bundles with Gemma 3n's audio sections get a record button.
 */
class MainActivity : AppCompatActivity() {
    private val bundleDir by lazy { File(filesDir, "bundle") }
    private val recorder = Recorder()
    private var manifest: Manifest? = null
    private var engine: Engine? = null
    private var conversation: Conversation? = null

    private lateinit var status: TextView
    private lateinit var transcript: TextView
    private lateinit var scroll: ScrollView
    private lateinit var stats: TextView
    private lateinit var load: Button
    private lateinit var send: Button
    private lateinit var record: Button

    private val pickFolder = registerForActivityResult(ActivityResultContracts.OpenDocumentTree()) { uri: Uri? ->
        if (uri != null) install(TreeSource(this, uri))
    }
    private val askMicrophone = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startRecording()
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        transcript = findViewById(R.id.transcript)
        scroll = findViewById(R.id.scroll)
        stats = findViewById(R.id.stats)
        load = findViewById(R.id.load)
        send = findViewById(R.id.send)
        record = findViewById(R.id.record)
        val url = findViewById<EditText>(R.id.url)
        val prompt = findViewById<EditText>(R.id.prompt)

        findViewById<Button>(R.id.pick).setOnClickListener { pickFolder.launch(null) }
        findViewById<Button>(R.id.download).setOnClickListener { install(HttpSource(url.text.toString().trim())) }
        load.setOnClickListener { loadEngine() }
        send.setOnClickListener {
            val text = prompt.text.toString().trim()
            if (text.isNotEmpty()) {
                prompt.text.clear()
                ask(Chat.text(text), text)
            }
        }
        record.setOnClickListener {
            when {
                record.text == getString(R.string.stop) -> recorder.stop()
                ContextCompat.checkSelfPermission(this, android.Manifest.permission.RECORD_AUDIO) == PackageManager.PERMISSION_GRANTED -> startRecording()
                else -> askMicrophone.launch(android.Manifest.permission.RECORD_AUDIO)
            }
        }

        val assets = AssetSource(this)
        when {
            bundleDir.isDirectory -> check()
            assets.exists() -> install(assets) // built with the app by exportBundle
            else -> status.text = "No bundle yet: pick a folder with manifest.json or download one."
        }
    }

    /** Into app storage: resumable, verified, and only a complete bundle ever appears. */
    private fun install(source: BundleSource) {
        closeEngine()
        lifecycleScope.launch {
            try {
                withContext(Dispatchers.IO) {
                    if (bundleDir.exists()) bundleDir.deleteRecursively()
                    Installer.install(source, bundleDir) { p ->
                        runOnUiThread { status.text = "copying ${p.file}: ${mib(p.bytesDone)} of ${mib(p.bytesTotal)} MiB" }
                    }
                }
                check()
            } catch (e: Exception) {
                status.text = "Not installed: ${e.message}\n(start again to resume)"
            }
        }
    }

    /** Verify every file, then the memory verdict; Load stays off unless the bundle fits. */
    private fun check() {
        load.isEnabled = false
        lifecycleScope.launch {
            try {
                val b = withContext(Dispatchers.IO) {
                    EdgepackBundle(bundleDir).also { b ->
                        b.verify { done, total -> runOnUiThread { status.text = "verifying: ${mib(done)} of ${mib(total)} MiB" } }
                    }
                }
                val m = b.manifest
                if (m.runtimeFormat != "litertlm") {
                    status.text = "This is an ${m.runtimeFormat} bundle; LiteRT-LM runs .litertlm bundles (edgepack export --format litertlm)."
                    return@launch
                }
                // LiteRT-LM on Android runs the CompiledModel API with XNNPACK's cache in cacheDir: "compiled".
                val verdict = Footprint.verdict(m, "compiled", availableMemory())
                manifest = m
                status.text = describe(m, verdict)
                load.isEnabled = verdict.fits
                record.visibility = if (m.hasAudio) View.VISIBLE else View.GONE
            } catch (e: Exception) {
                status.text = "Refused: ${e.message}"
            }
        }
    }

    private fun describe(m: Manifest, v: Verdict): String = buildString {
        appendLine("${m.source} (${m.quantization}, ${m.maxContext} tokens), checksums verified")
        appendLine(if (v.fits) "fits: needs about ${mib(v.prediction.peak)} of ${mib(v.budget)} MiB available"
                   else "does NOT fit: needs about ${mib(v.prediction.peak)} MiB, ${mib(v.budget)} MiB available; not loading it")
        v.prediction.lines().forEach { appendLine(it) }
    }

    /** What this process may still use: the system's available memory plus what the app holds. */
    private fun availableMemory(): Long {
        val info = ActivityManager.MemoryInfo()
        (getSystemService(ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(info)
        return info.availMem + (residentBytes() ?: 0L)
    }

    private fun loadEngine() {
        val m = manifest ?: return
        load.isEnabled = false
        status.append("\nloading …")
        lifecycleScope.launch {
            try {
                val started = System.nanoTime()
                val e = withContext(Dispatchers.IO) { Chat.open(bundleDir, m, cacheDir) }
                engine = e
                conversation = Chat.conversation(e)
                send.isEnabled = true
                status.append("\nloaded in %.1f s".format((System.nanoTime() - started) / 1e9))
            } catch (e: Exception) {
                status.append("\nLiteRT-LM could not load it: ${e.message}")
                load.isEnabled = true
            }
        }
    }

    private fun ask(contents: Contents, shown: String) {
        val c = conversation ?: return
        send.isEnabled = false
        transcript.append("\n> $shown\n")
        val s = GenerationStats()
        lifecycleScope.launch {
            try {
                Chat.answer(c, contents, s) { text ->
                    transcript.append(text)
                    scroll.post { scroll.fullScroll(View.FOCUS_DOWN) }
                }
            } catch (e: Exception) {
                transcript.append("\n[error: ${e.message}]")
            }
            stats.text = "${s.summary()}, memory ${mib(residentBytes() ?: 0)} MiB"
            send.isEnabled = true
        }
    }

    private fun startRecording() {
        record.text = getString(R.string.stop)
        lifecycleScope.launch {
            val wav = recorder.record()
            record.text = getString(R.string.record)
            val seconds = (wav.size - 44) / 2.0 / 16_000
            ask(Chat.audio(wav), "[%.1f s of audio]".format(seconds))
        }
    }

    private fun closeEngine() {
        Chat.close(engine, conversation)
        conversation = null
        engine = null
        send.isEnabled = false
    }

    override fun onDestroy() {
        closeEngine()
        super.onDestroy()
    }
}
