"""`hotlora serve` over real HTTP: the openai client and httpx against a server started on 127.0.0.1."""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_util import assert_one_line_error, hotlora

httpx = pytest.importorskip("httpx", reason="the test extras install httpx")
openai = pytest.importorskip("openai", reason="the test extras install the openai client")

DATA = Path(__file__).parent.parent / "data"
MODEL = DATA / "hotlora-tiny.gguf"
NUMBERS = DATA / "hotlora-tiny-numbers.lora.gguf"
CONCURRENCY = DATA / "hotlora-tiny-concurrency.lora.gguf"
KEY = "test-key"
GREEDY = {"temperature": 0, "max_tokens": 12}
NO_EOS = {"ignore_eos": True}  # llama-server's field: every completion runs to max_tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*options) -> tuple[subprocess.Popen, str]:
    """`hotlora serve` on the bundled model and a free port, once /health answers: (process, base URL)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hotlora", "serve", "-m", str(MODEL), "--port", str(port),
                             *map(str, options)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the server did not start: {proc.communicate()[1][-2000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lora_dir = tmp_path_factory.mktemp("loras")
    shutil.copy(CONCURRENCY, lora_dir / "concurrency.gguf")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(NUMBERS, outside / "secret.gguf")
    os.symlink(outside / "secret.gguf", lora_dir / "escape.gguf")
    proc, base = start_server("-c", "8192", "-t", "1", "--lora", NUMBERS, "--lora-init-without-apply",
                              "--lora-dir", lora_dir, "--api-key", KEY, "--max-body-bytes", "20000")
    yield base
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY)


def post(server: str, path: str, body=None, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server}{path}", json=body, headers=headers, timeout=60, **kwargs)


def complete(server: str, **fields) -> str:
    response = post(server, "/v1/completions", {"prompt": "Once upon a time", **GREEDY, **NO_EOS, **fields})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


# ---- the openai client --------------------------------------------------------------------------------------------

def test_openai_completion_whole_and_streamed_agree(client):
    whole = client.completions.create(model="hotlora-tiny.gguf", prompt="Once upon a time", extra_body=NO_EOS,
                                      **GREEDY)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="hotlora-tiny.gguf", prompt="Once upon a time", stream=True,
                                            extra_body=NO_EOS, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_chat_whole_and_streamed_agree(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three."}]
    whole = client.chat.completions.create(model="hotlora-tiny.gguf", messages=messages, **GREEDY)
    reply = whole.choices[0].message
    assert reply.role == "assistant" and isinstance(reply.content, str)
    chunks = list(client.chat.completions.create(model="hotlora-tiny.gguf", messages=messages, stream=True,
                                                 **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.content


def test_models_lists_the_base_and_every_adapter(client):
    assert [m.id for m in client.models.list().data][:2] == ["hotlora-tiny.gguf", "hotlora-tiny-numbers.lora"]


# ---- adapters per request --------------------------------------------------------------------------------------

def test_a_request_chooses_its_adapter_by_lora_list_or_model_name(server):
    base = complete(server)  # global scale 0 (--lora-init-without-apply)
    assert complete(server, lora=[]) == base
    adapted = complete(server, lora=[{"id": 0, "scale": 1.0}])
    assert adapted != base
    assert complete(server, model="hotlora-tiny-numbers.lora") == adapted
    assert complete(server) == base  # nothing leaked into the next request or its cache


def test_concurrent_requests_with_different_adapters_equal_each_alone(server):
    requests = [{"lora": [{"id": 0, "scale": s}], "prompt": p} for s in (0.0, 1.0, 0.5)
                for p in ("Once upon a time", "The numbers are")]
    alone = [complete(server, **r) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: complete(server, **r), requests))
    assert together == alone


def test_zero_max_tokens_generates_nothing(server):
    done = post(server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 0}).json()
    assert done["choices"][0]["text"] == "" and done["usage"]["completion_tokens"] == 0


def test_stop_strings_cut_the_completion(server):
    text = complete(server)
    stop = text.strip().split()[1]
    cut = post(server, "/v1/completions", {"prompt": "Once upon a time", **GREEDY, **NO_EOS, "stop": [stop]}).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[:text.index(stop)]


# ---- runtime loading -------------------------------------------------------------------------------------------

def test_runtime_load_serves_then_unloads(server):
    loaded = post(server, "/v1/load_lora_adapter", {"lora_name": "conc", "lora_path": "concurrency.gguf"})
    assert loaded.status_code == 200, loaded.text
    listing = httpx.get(f"{server}/lora-adapters", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {"id": loaded.json()["id"], "name": "conc", "scale": 0.0}.items() <= listing[-1].items()
    assert complete(server, model="conc") != complete(server)
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "conc"}).status_code == 200
    gone = post(server, "/v1/completions", {"prompt": "hi", "model": "conc", **GREEDY})
    assert gone.status_code == 404 and "conc" in gone.json()["error"]["message"]


def test_a_cached_prefix_follows_the_adapters_content_not_its_name(server):
    """Slot caches are keyed on the adapters' content (sha256) and scales: the same file unloaded and loaded
    again under another name reuses the prefix; an adapter of other content, at the same id or not, never does."""
    body = {"prompt": "Zebras keep the content-keyed slot cache", **GREEDY, **NO_EOS}
    load = {"lora_path": "concurrency.gguf"}
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "first", **load}).status_code == 200
    first = post(server, "/v1/completions", {**body, "model": "first"}).json()
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "first"}).status_code == 200
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "again", **load}).status_code == 200
    again = post(server, "/v1/completions", {**body, "model": "again"}).json()
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    assert again["timings"]["prompt_n"] == 1 < first["timings"]["prompt_n"]  # only the last prompt token again
    other = post(server, "/v1/completions", {**body, "lora": [{"id": 0, "scale": 1.0}]}).json()  # the numbers one
    # another slot may hold a cache made under the numbers adapter that starts with the same BOS token, no more
    assert other["timings"]["prompt_n"] >= first["timings"]["prompt_n"] - 1
    assert other["choices"][0]["text"] != first["choices"][0]["text"]
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "again"}).status_code == 200


@pytest.mark.parametrize("path,status", [("../outside/secret.gguf", 403), ("/etc/passwd", 403),
                                         ("escape.gguf", 403), ("missing.gguf", 404)])
def test_runtime_load_is_confined_to_lora_dir(server, path, status):
    response = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
    assert response.status_code == status, response.text
    assert path in response.json()["error"]["message"]


# ---- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,status,needle", [
    ({"prompt": "hi", "lora": [{"id": 7, "scale": 1}]}, 400, "invalid adapter id 7"),
    ({"prompt": "hi", "lora": "all"}, 400, "lora"),
    ({"prompt": "hi", "model": "nope"}, 404, "nope"),
    ({"prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": [999999]}, 400, "999999"),
    ({"max_tokens": 2}, 400, "prompt"),
])
def test_bad_requests_get_json_errors(server, body, status, needle):
    response = post(server, "/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and needle in error["message"] and error["type"]


def test_bad_json_oversized_body_and_wrong_key(server):
    bad = httpx.post(f"{server}/v1/completions", content=b"{not json", timeout=30,
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    big = post(server, "/v1/completions", {"prompt": "x" * 30000})
    assert big.status_code == 413
    for key in ("wrong", None):
        denied = post(server, "/v1/completions", {"prompt": "hi"}, key=key)
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server}/health").status_code == 200  # no key needed


# ---- llama-server's endpoints ---------------------------------------------------------------------------------

def test_tokenize_detokenize_metrics_and_native_completion(server):
    tokens = post(server, "/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": tokens}).json()["content"].strip() == "Hello world"
    native = post(server, "/completion", {"prompt": "Once upon a time", "n_predict": 12, "temperature": 0,
                                          **NO_EOS}).json()
    assert native["content"] == complete(server) and native["tokens_predicted"] == 12
    metrics = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "llamacpp:prompt_tokens_total" in metrics and "llamacpp:tokens_predicted_total" in metrics


def test_global_scales_through_post_lora_adapters(server):
    base = complete(server)
    assert post(server, "/lora-adapters", [{"id": 0, "scale": 1.0}]).json() == {"success": True}
    try:
        assert complete(server) == complete(server, lora=[{"id": 0, "scale": 1.0}]) != base
    finally:
        post(server, "/lora-adapters", [])
    assert complete(server) == base
    assert post(server, "/lora-adapters", {"id": 0}).status_code == 400


def test_unloading_an_adapter_in_use_is_refused(server):
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "busy", "lora_path": "concurrency.gguf"}).status_code == 200
    # runs until its slot of 2048 cells is full (about a second): the unload below comes while it runs
    body = {"prompt": "Once upon a time", "model": "busy", "temperature": 0, "stream": True, **NO_EOS}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as streaming:
        lines = streaming.iter_lines()  # kept: a dropped line iterator closes the stream (and the request)
        assert next(lines).startswith("data: ")  # generating now
        refused = post(server, "/v1/unload_lora_adapter", {"lora_name": "busy"})
        assert refused.status_code == 409 and "busy" in refused.json()["error"]["message"]
    for _ in range(50):  # the closed stream's request leaves its slot at the next step
        if post(server, "/v1/unload_lora_adapter", {"lora_name": "busy"}).status_code == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the adapter stayed in use after its request ended")


def test_a_port_in_use_is_one_error_line(server):
    port = server.rsplit(":", 1)[1]
    assert_one_line_error(hotlora("serve", "-m", MODEL, "--port", port), 1, f"127.0.0.1:{port}", "in use")


def test_sigterm_finishes_the_requests_in_flight_then_exits():
    proc, base = start_server("-t", "1")
    body = {"prompt": "Once upon a time", "temperature": 0, "stream": True, "max_tokens": 300, **NO_EOS}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as streaming:
        lines = streaming.iter_lines()
        assert next(lines).startswith("data: ")
        proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and '"finish_reason": "length"' in rest[-2]  # all 300 tokens came
    _, err = proc.communicate(timeout=30)
    # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM, as it should
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in err, (proc.returncode, err)


def test_a_repeated_prompt_reuses_its_slots_cache(server):
    body = {"prompt": "A prompt that only this test sends", **GREEDY, **NO_EOS}
    first, second = (post(server, "/v1/completions", body).json() for _ in range(2))
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert second["timings"]["prompt_n"] == 1 < first["timings"]["prompt_n"]  # only the last prompt token again
