package dev.edgepack.core

/**
 * A strict JSON reader for manifests (RFC 8259): objects become [Map], arrays [List], integers
 * [Long], other numbers [Double]. A manifest is untrusted input, so nesting is bounded and
 * anything malformed is a [JsonError] with the offset, never a crash. No dependency: the core
 * runs on any JVM, and Android's org.json is not on a desktop JVM.
 */
class JsonError(message: String) : Exception(message)

object Json {
    private const val MAX_DEPTH = 64

    fun parse(text: String): Any? {
        val r = Reader(text)
        r.skipSpace()
        val value = r.value(0)
        r.skipSpace()
        if (r.pos != text.length) throw r.error("extra data")
        return value
    }

    private class Reader(val s: String) {
        var pos = 0

        fun error(what: String) = JsonError("$what at character $pos")

        fun skipSpace() {
            while (pos < s.length && s[pos] in " \t\r\n") pos++
        }

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) throw error("nesting deeper than $MAX_DEPTH")
            if (pos >= s.length) throw error("unexpected end")
            return when (val c = s[pos]) {
                '{' -> obj(depth)
                '[' -> array(depth)
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') number() else throw error("unexpected '$c'")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) throw error("unexpected '${s[pos]}'")
            pos += word.length
            return v
        }

        private fun obj(depth: Int): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (pos < s.length && s[pos] == '}') { pos++; return out }
            while (true) {
                skipSpace()
                if (pos >= s.length || s[pos] != '"') throw error("expected a key")
                val key = string()
                skipSpace()
                if (pos >= s.length || s[pos] != ':') throw error("expected ':'")
                pos++
                skipSpace()
                out[key] = value(depth + 1)
                skipSpace()
                if (pos >= s.length) throw error("unexpected end")
                when (s[pos++]) {
                    ',' -> continue
                    '}' -> return out
                    else -> { pos--; throw error("expected ',' or '}'") }
                }
            }
        }

        private fun array(depth: Int): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipSpace()
            if (pos < s.length && s[pos] == ']') { pos++; return out }
            while (true) {
                skipSpace()
                out.add(value(depth + 1))
                skipSpace()
                if (pos >= s.length) throw error("unexpected end")
                when (s[pos++]) {
                    ',' -> continue
                    ']' -> return out
                    else -> { pos--; throw error("expected ',' or ']'") }
                }
            }
        }

        private fun string(): String {
            val sb = StringBuilder()
            pos++
            while (true) {
                if (pos >= s.length) throw error("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (pos >= s.length) throw error("unterminated string")
                        when (val e = s[pos++]) {
                            '"', '\\', '/' -> sb.append(e)
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000c')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) throw error("bad \\u escape")
                                val hex = s.substring(pos, pos + 4)
                                if (!hex.all { it in '0'..'9' || it in 'a'..'f' || it in 'A'..'F' }) throw error("bad \\u escape")
                                sb.append(hex.toInt(16).toChar())
                                pos += 4
                            }
                            else -> throw error("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> { pos--; throw error("control character in a string") }
                    else -> sb.append(c)
                }
            }
        }

        private fun number(): Any {
            val start = pos
            if (s[pos] == '-') pos++
            if (pos < s.length && s[pos] == '0') pos++ else digits()
            var integral = true
            if (pos < s.length && s[pos] == '.') { integral = false; pos++; digits() }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                integral = false
                pos++
                if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos++
                digits()
            }
            val text = s.substring(start, pos)
            // Integers past a Long (Python writes any size) stay out of range rather than wrap.
            return if (integral) text.toLongOrNull() ?: throw error("integer out of range") else text.toDouble()
        }

        private fun digits() {
            val start = pos
            while (pos < s.length && s[pos] in '0'..'9') pos++
            if (pos == start) throw error("expected a digit")
        }
    }
}
