package dev.edgepack.demo

import com.google.ai.edge.litertlm.Backend
import com.google.ai.edge.litertlm.Content
import com.google.ai.edge.litertlm.Contents
import com.google.ai.edge.litertlm.Conversation
import com.google.ai.edge.litertlm.ConversationConfig
import com.google.ai.edge.litertlm.Engine
import com.google.ai.edge.litertlm.EngineConfig
import com.google.ai.edge.litertlm.SamplerConfig
import dev.edgepack.core.GenerationStats
import dev.edgepack.core.Manifest
import java.io.File

/**
 * Everything the app asks of LiteRT-LM, in one file without Android classes, so its calls can be
 * compiled against LiteRT-LM's Kotlin API sources on a plain JVM (android_demo/README.md).
 */
object Chat {
    /** LiteRT-LM on the CPU backend, the KV cache as long as the bundle's context, XNNPACK's
     * packed weights kept in `cacheDir` (the next start maps them instead of packing again). Slow
     * (seconds): call it off the main thread. */
    fun open(bundleDir: File, m: Manifest, cacheDir: File): Engine =
        Engine(EngineConfig(
            modelPath = File(bundleDir, m.graph.file).absolutePath,
            backend = Backend.CPU(),
            audioBackend = if (m.hasAudio) Backend.CPU() else null,
            maxNumTokens = m.maxContext.toInt(),
            cacheDir = cacheDir.absolutePath,
        )).also { it.initialize() }

    fun conversation(engine: Engine): Conversation =
        engine.createConversation(ConversationConfig(samplerConfig = SamplerConfig(topK = 40, topP = 0.95, temperature = 0.8)))

    fun text(prompt: String): Contents = Contents.of(prompt)

    /** WAV bytes (core's Wav: 16 kHz mono PCM16) and the instruction that goes with them. */
    fun audio(wav: ByteArray, prompt: String = "Transcribe this audio."): Contents =
        Contents.of(Content.AudioBytes(wav), Content.Text(prompt))

    /** Streams the answer to `onText`, a chunk per decode step, timing it in `stats`. */
    suspend fun answer(conversation: Conversation, contents: Contents, stats: GenerationStats, onText: (String) -> Unit) {
        stats.started()
        conversation.sendMessageAsync(contents).collect { message ->
            stats.token()
            onText(message.toString())
        }
    }

    fun close(engine: Engine?, conversation: Conversation?) {
        if (conversation?.isAlive == true) conversation.close()
        if (engine?.isInitialized() == true) engine.close()
    }
}
