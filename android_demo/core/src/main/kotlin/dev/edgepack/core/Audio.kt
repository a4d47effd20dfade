package dev.edgepack.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * WAV for Gemma 3n's audio input: 16 kHz, mono, 16-bit PCM, as LiteRT-LM's `Content.AudioBytes`
 * takes it (Google's AI Edge Gallery records the same: 16 kHz mono, at most 30 s). Android's
 * AudioRecord gives 16-bit samples (ENCODING_PCM_16BIT) or floats (ENCODING_PCM_FLOAT).
 */
object Wav {
    const val SAMPLE_RATE = 16_000
    const val MAX_SECONDS = 30 // the audio encoder's window

    fun pcm16(samples: ShortArray, sampleRate: Int = SAMPLE_RATE): ByteArray {
        require(sampleRate > 0) { "sample rate must be positive, got $sampleRate" }
        val data = samples.size * 2
        val b = ByteBuffer.allocate(44 + data).order(ByteOrder.LITTLE_ENDIAN)
        b.put("RIFF".toByteArray()).putInt(36 + data).put("WAVE".toByteArray())
        b.put("fmt ".toByteArray()).putInt(16).putShort(1) // PCM
        b.putShort(1).putInt(sampleRate).putInt(sampleRate * 2).putShort(2).putShort(16) // mono, 2-byte frames
        b.put("data".toByteArray()).putInt(data)
        for (s in samples) b.putShort(s)
        return b.array()
    }

    /** Float samples in [-1, 1] (outside is clipped) to 16-bit: x * 32767, rounded half away from zero. */
    fun pcm16(samples: FloatArray, sampleRate: Int = SAMPLE_RATE): ByteArray =
        pcm16(ShortArray(samples.size) { toPcm16(samples[it]) }, sampleRate)

    fun toPcm16(x: Float): Short {
        val v = if (x.isNaN()) 0f else x.coerceIn(-1f, 1f) * 32767f
        return (if (v >= 0) (v + 0.5f).toInt() else -((-v + 0.5f).toInt())).toShort()
    }
}
