package dev.edgepack.demo

import android.annotation.SuppressLint
import android.media.AudioFormat
import android.media.AudioRecord
import android.media.MediaRecorder
import dev.edgepack.core.Wav
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.isActive
import kotlinx.coroutines.withContext
import kotlin.coroutines.coroutineContext

/** Microphone audio as Gemma 3n takes it: 16 kHz mono 16-bit, at most the encoder's 30 s, as WAV bytes. */
class Recorder {
    @Volatile private var recording = false

    fun stop() {
        recording = false
    }

    /** Records until [stop] or 30 s; needs the RECORD_AUDIO permission. */
    @SuppressLint("MissingPermission")
    suspend fun record(): ByteArray = withContext(Dispatchers.IO) {
        val rate = Wav.SAMPLE_RATE
        val min = AudioRecord.getMinBufferSize(rate, AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT)
        val mic = AudioRecord(MediaRecorder.AudioSource.MIC, rate, AudioFormat.CHANNEL_IN_MONO,
                              AudioFormat.ENCODING_PCM_16BIT, maxOf(min, rate / 5 * 2))
        val samples = ShortArray(rate * Wav.MAX_SECONDS)
        var n = 0
        recording = true
        mic.startRecording()
        try {
            while (recording && n < samples.size && coroutineContext.isActive) {
                val k = mic.read(samples, n, minOf(rate / 10, samples.size - n))
                if (k < 0) break
                n += k
            }
        } finally {
            mic.stop()
            mic.release()
            recording = false
        }
        Wav.pcm16(samples.copyOf(n))
    }
}
