"""--prompt-cache / --prompt-cache-all / --prompt-cache-ro: llama-cli's session files, keyed on the model,
the adapter set (contents and scales) and the KV layout; a damaged file is an error and is left alone."""
from __future__ import annotations

import json
import struct

import pytest

import hotlora
from hotlora.model import default_adapter_paths, default_model_path
from hotlora.prompt_cache import HEADER, PromptCache, cache_key
from hotlora.session import Session

from cli_util import assert_one_line_error, hotlora as run_cli

MODEL = default_model_path()
A = next(p for p in default_adapter_paths() if "numbers" in p.name)
B = next(p for p in default_adapter_paths() if "concurrency" in p.name)
PROMPT = "The quick brown fox jumps over the lazy dog and then"


def run_json(*args):
    proc = run_cli("run", "-m", MODEL, "-p", PROMPT, "-n", "8", "--temp", "0", "--json", "-t", "1", "-c", "128",
                   *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def header_tokens(path) -> int:
    return HEADER.unpack(path.read_bytes()[:HEADER.size])[3]


def test_cache_is_reused_under_its_adapter_and_recomputed_under_another(tmp_path):
    cache = tmp_path / "prompt.cache"
    first, err = run_json("--hot-lora", A, "--prompt-cache", cache)
    n_prompt = len(first["prompt_tokens"])
    assert "session file does not exist, will create." in err and cache.exists()
    assert first["timings"]["prompt_n"] == n_prompt and header_tokens(cache) == n_prompt

    again, err = run_json("--hot-lora", A, "--prompt-cache", cache)
    assert f"session file matches {n_prompt} / {n_prompt} tokens of prompt" in err
    assert again["timings"]["prompt_n"] == 0 and again["tokens"] == first["tokens"]  # only the last token re-run

    other, err = run_json("--hot-lora", B, "--prompt-cache", cache)
    assert "was made with another model, adapter set or cache type; recomputing" in err
    assert other["timings"]["prompt_n"] == n_prompt
    fresh, _ = run_json("--hot-lora", B)
    assert other["tokens"] == fresh["tokens"] != first["tokens"]


def test_key_covers_adapter_contents_scales_and_order():
    with hotlora.Model(MODEL, n_ctx=32, n_threads=1) as m:
        a, b = m.load_adapter(A), m.load_adapter(B)
        keys = []
        for active in ({}, {a: 1.0}, {a: 0.5}, {b: 1.0}, {a: 1.0, b: 1.0}, {b: 1.0, a: 1.0}):
            m.set_adapters(active)
            keys.append(cache_key(m))
        assert len(set(keys)) == len(keys)
        m.set_adapters({a: 1.0})
        assert cache_key(m) == keys[1]
    with hotlora.Model(MODEL, n_ctx=32, n_threads=1, cache_type="f32") as m:
        assert cache_key(m) != keys[0]


def test_all_saves_the_generated_tokens_and_ro_never_writes(tmp_path):
    cache = tmp_path / "all.cache"
    first, _ = run_json("--prompt-cache", cache, "--prompt-cache-all")
    n_prompt, n_generated = len(first["prompt_tokens"]), len(first["tokens"])
    assert header_tokens(cache) == n_prompt + n_generated - 1  # the last sampled token is never evaluated
    before = cache.read_bytes()
    longer = run_cli("run", "-m", MODEL, "-p", PROMPT + first["text"] + " and more", "-n", "4", "--temp", "0",
                     "--json", "-t", "1", "-c", "128", "--prompt-cache", cache, "--prompt-cache-ro")
    assert longer.returncode == 0, longer.stderr
    result = json.loads(longer.stdout)
    matched = int(longer.stderr.split("session file matches ")[1].split(" /")[0])
    assert n_prompt <= matched < len(result["prompt_tokens"])
    assert result["timings"]["prompt_n"] == len(result["prompt_tokens"]) - matched
    assert cache.read_bytes() == before


def _saved_cache(tmp_path, model) -> tuple:
    path = tmp_path / "p.cache"
    ids = model.tokenize(PROMPT)
    model.eval_last(ids)
    PromptCache(path, log=lambda s: None).save(model, final=False)
    return path, ids


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-3], "truncated"),
    (lambda b: b + b"x", "truncated, or bytes after the end"),
    (lambda b: b"GGUF" + b[4:], "not a hotlora prompt cache"),
    (lambda b: b[:HEADER.size + 5] + bytes([b[HEADER.size + 5] ^ 1]) + b[HEADER.size + 6:], "checksum"),
    (lambda b: b[:HEADER.size - 40] + struct.pack("<Q", 12) + b[HEADER.size - 32:], "state bytes"),
    (lambda b: b[:10], "not a hotlora prompt cache"),
])
def test_damaged_file_is_an_error_and_stays_untouched(tmp_path, damage, message):
    with hotlora.Model(MODEL, n_ctx=64, n_threads=1) as m:
        path, ids = _saved_cache(tmp_path, m)
        path.write_bytes(damage(path.read_bytes()))
        before = path.read_bytes()
        m.reset()
        with pytest.raises(hotlora.HotLoraError, match=message):
            PromptCache(path, log=lambda s: None).restore(m, ids)
        assert path.read_bytes() == before and m.n_past == 0


def test_cache_longer_than_the_context_is_recomputed(tmp_path):
    with hotlora.Model(MODEL, n_ctx=64, n_threads=1) as m:
        path, ids = _saved_cache(tmp_path, m)
    warnings = []
    with hotlora.Model(MODEL, n_ctx=8, n_threads=1) as m:
        assert PromptCache(path, log=warnings.append).restore(m, ids[:4]) == 0 and m.n_past == 0
    assert any(f"{len(ids)} tokens for a context of 8; recomputing" in w for w in warnings)


def test_cache_of_another_version_is_recomputed(tmp_path):
    warnings = []
    with hotlora.Model(MODEL, n_ctx=64, n_threads=1) as m:
        path, ids = _saved_cache(tmp_path, m)
        data = path.read_bytes()
        path.write_bytes(data[:8] + struct.pack("<I", 99) + data[12:])
        m.reset()
        assert PromptCache(path, log=warnings.append).restore(m, ids) == 0 and m.n_past == 0
    assert any("version 99, not 1; recomputing" in w for w in warnings)


def test_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")
    with hotlora.Model(MODEL, n_ctx=64, n_threads=1) as m:
        m.eval_last(m.tokenize(PROMPT))
        monkeypatch.setattr("hotlora.output_file.os.replace", refuse)
        with pytest.raises(hotlora.HotLoraError, match="cannot write .*p.cache.*No space left on device"):
            PromptCache(tmp_path / "p.cache").save(m, final=False)
    assert list(tmp_path.iterdir()) == []


def test_restored_prefix_gives_the_same_logits_as_a_fresh_prompt(tmp_path):
    with hotlora.Model(MODEL, n_ctx=64, n_threads=1, cache_type="f32") as m:
        path, ids = _saved_cache(tmp_path, m)
        longer = ids + m.tokenize(" over and over", add_bos=False)
        m.reset()
        fresh = Session(m, m.sampler(temp=0.0))
        fresh.feed(longer)
        m.reset()
        n_cached = PromptCache(path, log=lambda s: None).restore(m, longer)
        cached = Session(m, m.sampler(temp=0.0))
        cached.feed(longer, n_cached)
        assert n_cached == len(ids) and m.n_past == len(longer)
        assert abs(cached.logits - fresh.logits).max() <= 1e-4 * abs(fresh.logits).max()


def test_cli_errors_name_the_cache_file(tmp_path):
    bad = tmp_path / "bad.cache"
    bad.write_bytes(b"HLPCACHE" + b"\0" * 20)
    proc = run_cli("run", "-m", MODEL, "-p", "hi", "-n", "2", "--prompt-cache", bad)
    assert_one_line_error(proc, 1, "failed to load prompt cache", str(bad))
    assert bad.read_bytes() == b"HLPCACHE" + b"\0" * 20
    proc = run_cli("run", "-m", MODEL, "-p", "hi", "-n", "2", "--prompt-cache", tmp_path / "no" / "dir.cache")
    assert_one_line_error(proc, 1, "cannot write prompt cache", "dir.cache")
    assert list(tmp_path.iterdir()) == [bad]
    proc = run_cli("run", "-m", MODEL, "-p", "hi", "-i", "--prompt-cache", tmp_path / "x", "--prompt-cache-all")
    assert_one_line_error(proc, 1, "--prompt-cache-all")


def test_core_state_calls_check_sizes():
    from hotlora._native import ffi, lib
    with hotlora.Model(MODEL, n_ctx=16, n_threads=1) as m:
        m.eval_last(m.tokenize("The cat"))
        tokens, state = m.kv_state()
        seq = lib.hl_context_sequence(m._ctx)
        assert seq == m.default_sequence.handle
        size = lib.hl_sequence_state_size(seq, len(tokens))
        assert size == len(state) > 0 and lib.hl_sequence_state_size(seq, 17) == lib.hl_sequence_state_size(seq, -1) == 0
        small = bytearray(size - 1)
        assert lib.hl_sequence_state_read(seq, ffi.from_buffer(small), len(small)) != lib.HL_OK
        for n_cells, n_bytes in ((len(tokens), size - 1), (len(tokens) + 1, size), (17, size), (-1, size)):
            assert lib.hl_sequence_state_write(seq, ffi.from_buffer(state), n_bytes, n_cells) != lib.HL_OK
        assert m.n_past == len(tokens)
        with pytest.raises(hotlora.HotLoraError, match="KV state"):
            m.load_kv_state(tokens + [10**6], state)
        m.reset()
        m.load_kv_state(tokens, state)
        assert m.kv_state() == (tokens, state)
