"""`edgepack serve` driven by OpenAI's own Python client (and raw HTTP for the SSE framing and the
errors a client library hides), on a server started on loopback with a tiny bundle. What the
server says is checked against the runtime run directly on the same bundle."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")

from edgepack.runtime import Generator  # noqa: E402
from edgepack.runtime import chat as chat_prompt  # noqa: E402
from edgepack.serve import ServeOptions, Server  # noqa: E402

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}


def started(folder, **options) -> Server:
    server = Server(folder, ServeOptions(port=0, **options)).start()
    for _ in range(600):
        if server.generator is not None or server.load_error:
            return server
        time.sleep(0.05)
    raise TimeoutError("the bundle did not load")


@pytest.fixture(scope="module")
def folder(bundle):
    return bundle("gemma3", "onnx")


@pytest.fixture(scope="module")
def server(folder):
    s = started(folder)
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(folder):
    """The same bundle run in-process, without the server: the reference for what it answers."""
    return Generator(folder)


def client(server, key="none") -> "openai.OpenAI":
    host, port = server.address
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, max_retries=0)


def raw(server, method, path, body=None, headers=None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(*server.address, timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = (r.status, dict(r.getheaders()), r.read())
    conn.close()
    return out


def greedy(local, ids, n) -> tuple[str, int]:
    local.reuse_cache = False
    out = list(local.generate_ids(ids, n))
    return local.tokenizer.decode(out, skip_special_tokens=True), local.last_run.new_tokens


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_what_the_runtime_generates(server, local):
    r = client(server).chat.completions.create(model="x", messages=MESSAGES, max_tokens=12, temperature=0)
    ids = chat_prompt.encode(local.tokenizer, local.chat_template, MESSAGES)
    text, new = greedy(local, ids, 12)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == new
    assert r.choices[0].finish_reason == ("length" if new == 12 else "stop")
    assert r.model == folder_name(server)


def folder_name(server) -> str:
    return client(server).models.list().data[0].id


def test_streamed_chat_is_the_same_text_with_usage_at_the_end(server):
    c = client(server)
    whole = c.chat.completions.create(model="x", messages=MESSAGES, max_tokens=12, temperature=0)
    chunks = list(c.chat.completions.create(model="x", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_framing(server):
    status, headers, body = raw(server, "POST", "/v1/completions",
                                {"prompt": "The capital of France is", "max_tokens": 4, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(json.loads(e[6:])["object"] == "text_completion" for e in events[:-2])


def test_completions_for_base_prompts(server, local):
    r = client(server).completions.create(model="x", prompt="The capital of France is", max_tokens=8, temperature=0)
    text, new = greedy(local, local.encode("The capital of France is"), 8)
    assert r.choices[0].text == text and r.usage.completion_tokens == new
    assert r.usage.prompt_tokens == len(local.encode("The capital of France is"))


def test_stop_strings_cut_the_text(server, local):
    text, _ = greedy(local, local.encode("Once upon a time"), 16)
    stop = text[3:5]
    assert stop.strip(), text
    r = client(server).completions.create(model="x", prompt="Once upon a time", max_tokens=16, temperature=0,
                                          stop=[stop])
    assert r.choices[0].text == text[:text.index(stop)] and r.choices[0].finish_reason == "stop"


def test_the_next_turn_reuses_the_cached_turns(bundle):
    """The .litertlm: its rings keep 7 slots past the window, so a reply that the template renders
    back a little differently (trimmed) still leaves the turns before it reusable (Engine.reusable)."""
    folder = bundle("gemma3", "litertlm")
    server, local = started(folder), Generator(folder)
    try:
        first = client(server).chat.completions.create(model="x", messages=MESSAGES, max_tokens=6, temperature=0)
        turn = MESSAGES + [{"role": "assistant", "content": first.choices[0].message.content},
                           {"role": "user", "content": "And of Spain?"}]
        _, _, body = raw(server, "POST", "/v1/chat/completions", {"messages": turn, "max_tokens": 6, "temperature": 0})
        second = json.loads(body)
        before = chat_prompt.encode(local.tokenizer, local.chat_template, MESSAGES)
        assert second["timings"]["cache_n"] >= len(before)
        assert second["timings"]["prompt_n"] == second["usage"]["prompt_tokens"] - second["timings"]["cache_n"]
        text, _ = greedy(local, chat_prompt.encode(local.tokenizer, local.chat_template, turn), 6)  # empty cache
        assert second["choices"][0]["message"]["content"] == text
    finally:
        server.close()


def test_a_tool_call_is_parsed_from_real_engine_output(real, monkeypatch):
    """Random weights don't call tools: the sampler is made to pick the tokens of a call (the
    engine still runs every step), and the server must parse them back."""
    from edgepack.runtime import sampling

    server, _ = real
    gen = server.generator
    for wanted, finish in [("```tool_code\nprint(get_weather(city='Paris'))\n```", "tool_calls"),
                           ("```tool_code\nprint(get_stock(symbol='X'))\n```", "length")]:
        forced = iter(gen.tokenizer.encode(wanted) + [1])  # then <eos>
        monkeypatch.setattr(sampling.Sampler, "__call__", lambda self, logits: next(forced))
        r = client(server).chat.completions.create(model="x", messages=[{"role": "user", "content": "Weather?"}],
                                                   tools=[WEATHER], max_tokens=40)
        choice = r.choices[0]
        if finish == "tool_calls":
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            [call] = choice.message.tool_calls
            assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        else:  # an unknown function stays text
            assert choice.message.tool_calls is None and choice.message.content == wanted
        monkeypatch.undo()


@pytest.mark.parametrize("body,param", [
    ({"messages": MESSAGES, "n": 2}, "n"),
    ({"messages": MESSAGES, "temperature": -1}, "temperature"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "not an identifier"}}]}, "tools[0]"),
    ({"messages": [{"role": "user", "content": "x " * 200}]}, "messages"),  # past the 64-token context
])
def test_bad_requests_get_400_with_openais_error_body(server, body, param):
    status, _, raw_body = raw(server, "POST", "/v1/chat/completions", body)
    error = json.loads(raw_body)["error"]
    assert status == 400 and error["param"] == param and error["message"], error


def test_protocol_errors(server):
    assert raw(server, "POST", "/v1/chat/completions", b"{not json")[0] == 400
    assert raw(server, "GET", "/v2/nothing")[0] == 404
    # A body over the limit is refused from its Content-Length, before it is read
    sock = socket.create_connection(server.address, timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
    assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
    sock.close()
    with pytest.raises(openai.BadRequestError, match="context"):
        client(server).completions.create(model="x", prompt="word " * 100, max_tokens=4)
    assert json.loads(raw(server, "GET", "/health")[2]) == {"status": "ok"}


def test_api_keys_and_rate_limit(folder, tmp_path):
    s = started(folder, api_keys=("k-one", "k-two"), rate_limit=2)
    try:
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        assert raw(s, "GET", "/health")[0] == 200  # health needs no key
        ok = client(s, "k-two")
        ok.models.list()
        ok.models.list()
        status, headers, _ = raw(s, "GET", "/v1/models", headers={"Authorization": "Bearer k-two"})
        assert status == 429 and 0 < int(headers["Retry-After"]) <= 60
        assert raw(s, "GET", "/v1/models", headers={"Authorization": "Bearer k-one"})[0] == 200  # per key
    finally:
        s.close()


def test_a_full_queue_gets_503_and_the_waiting_request_completes(folder):
    s = started(folder, max_queue=0)
    results = {}
    try:
        s.engine_lock.acquire()  # the engine is busy
        waiting = threading.Thread(target=lambda: results.update(a=raw(s, "POST", "/v1/completions",
                                                                       {"prompt": "Hi", "max_tokens": 2})))
        waiting.start()
        while s.admitted == 0:
            time.sleep(0.01)
        status, headers, _ = raw(s, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 503 and headers["Retry-After"]
        s.engine_lock.release()
        waiting.join(60)
        assert results["a"][0] == 200
    finally:
        s.close()


def test_a_client_that_leaves_cancels_its_generation(server, monkeypatch):
    from edgepack.runtime import sampling

    real = sampling.Sampler.__call__

    def slow(self, logits):  # 30 ms a token, so the generation outlives the client
        time.sleep(0.03)
        return real(self, logits)

    monkeypatch.setattr(sampling.Sampler, "__call__", slow)
    body = json.dumps({"prompt": "Hi", "max_tokens": 50, "stream": True, "temperature": 0}).encode()
    sock = socket.create_connection(server.address, timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    seen = b""
    while b"data: " not in seen:  # the first event
        seen += sock.recv(4096)
    sock.close()
    time.sleep(0.1)
    for _ in range(200):
        if not server.engine_lock.locked():
            break
        time.sleep(0.05)
    assert server.generator.last_run.new_tokens < 20


def test_metrics_parse_as_prometheus_text(server):
    from prometheus_client.parser import text_string_to_metric_families

    client(server).completions.create(model="x", prompt="Hi", max_tokens=2)
    status, headers, body = raw(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    done = [s for s in families["edgepack_requests"].samples
            if s.name == "edgepack_requests_total" and s.labels == {"endpoint": "/v1/completions", "status": "200"}]
    assert done and done[0].value >= 1
    assert next(s.value for s in families["edgepack_generated_tokens"].samples) >= 1
    assert next(s.value for s in families["edgepack_process_resident_bytes"].samples) > 10 << 20
    assert any(s.name.endswith("_bucket") for s in families["edgepack_time_to_first_token_seconds"].samples)
    for name in ("edgepack_queue_depth", "edgepack_requests_in_flight", "edgepack_kv_cache_fill_ratio",
                 "edgepack_ple_store_resident_bytes", "edgepack_decode_tokens_per_second", "edgepack_rejections"):
        assert name in families, name


@pytest.fixture(scope="module")
def real(bundle_270m, tmp_path_factory):
    """The real Gemma 3 270M, int4 ONNX, served: a base model, given Gemma's chat template in a
    copy of its manifest so that the tool-calling path runs at a context that holds the tools."""
    from checkpoints import GEMMA_CHAT_TEMPLATE

    folder = tmp_path_factory.mktemp("chat") / "gemma-3-270m-int4"
    shutil.copytree(bundle_270m("onnx", "int4"), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"chat_template": GEMMA_CHAT_TEMPLATE}))
    s = started(folder, max_queue=8)
    yield s, Generator(folder)
    s.close()


def test_the_real_270m_completes_through_the_openai_client(real):
    server, local = real
    r = client(server).completions.create(model="gemma", prompt="The capital of France is", max_tokens=8,
                                          temperature=0)
    text, _ = greedy(local, local.encode("The capital of France is"), 8)
    assert r.choices[0].text == text and text.strip()


def test_32_concurrent_clients_get_their_own_answers_or_a_clean_refusal(real):
    """32 clients at once against one engine and 8 queue places: every accepted request completes
    with the answer to its own prompt; the others get a 503 with Retry-After; none is lost. (Each
    prompt prefilled whole, `cache_prompt: false`: int4 kernels give a prompt split in two chunks
    slightly other logits than in one, and greedy picks can follow.)"""
    server, local = real
    prompts = [f"Question {i}: the largest planet is" for i in range(8)]
    want = {p: greedy(local, local.encode(p), 4)[0] for p in prompts}
    results = [None] * 32

    def one(i):
        results[i] = raw(server, "POST", "/v1/completions",
                         {"prompt": prompts[i % 8], "max_tokens": 4, "temperature": 0, "cache_prompt": False})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r is not None for r in results)
    done = [i for i, r in enumerate(results) if r[0] == 200]
    refused = [i for i, r in enumerate(results) if r[0] == 503]
    assert len(done) + len(refused) == 32 and len(done) >= 9  # the engine's one and the queue's 8, at least
    for i in done:
        assert json.loads(results[i][2])["choices"][0]["text"] == want[prompts[i % 8]], i
    for i in refused:
        assert results[i][1]["Retry-After"] and json.loads(results[i][2])["error"]["type"] == "server_busy"
