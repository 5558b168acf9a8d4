"""Non-finite logits end in one error naming the position and the first non-finite node, never a sampler crash."""
from __future__ import annotations

import numpy as np
import pytest

from cli_util import assert_one_line_error, hotlora
from factory import write_adapter_file
from gguf_edit import with_nan_bytes
from hotlora.errors import NonFiniteError
from hotlora.model import Model, default_model_path

N_EMBD, N_KV = 256, 128  # the bundled model's n_embd and head_dim * n_head_kv


def _attn_k_adapter(path, b_value=None):
    """A rank-4 adapter on blk.0.attn_k of the bundled model; b_value, if given, is written into B[0, 0]."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1 / 16, (4, N_EMBD)).astype(np.float32)
    b = rng.normal(0, 0.5, (N_KV, 4)).astype(np.float32)
    if b_value is not None:
        b[0, 0] = b_value
    return write_adapter_file(path, "llama", {"blk.0.attn_k.weight.lora_a": a, "blk.0.attn_k.weight.lora_b": b},
                              alpha=None)


@pytest.fixture(scope="module")
def nan_adapter(tmp_path_factory):
    return _attn_k_adapter(tmp_path_factory.mktemp("a") / "nan.lora.gguf", np.nan)


@pytest.fixture(scope="module")
def big_adapter(tmp_path_factory):
    return _attn_k_adapter(tmp_path_factory.mktemp("a") / "big.lora.gguf")


@pytest.fixture(scope="module")
def nan_scale_model(tmp_path_factory):
    """The bundled model with the F16 scale of row 3's first Q8_0 block of blk.1.ffn_down set to NaN."""
    return with_nan_bytes(default_model_path(), tmp_path_factory.mktemp("m") / "nan_scale.gguf",
                          "blk.1.ffn_down.weight", 3, 0)


def _run(*args):
    return hotlora("run", "-p", "hello world", "-n", "4", "--temp", "0", "-t", "2", *args)


def test_nan_adapter_cli(nan_adapter):
    assert_one_line_error(_run("--lora", nan_adapter), 1, "non-finite logits", "token position",
                          "blk.0.attn_qkv (attn_k)")


def test_adapter_overflowing_f16_cache_cli(big_adapter):
    assert_one_line_error(_run("--lora-scaled", big_adapter, "1e5"), 1, "non-finite logits",
                          "blk.0.attn_qkv (k cache) at position 0")


def test_adapter_at_1e5_is_finite_with_f32_cache(big_adapter):
    proc = _run("--lora-scaled", big_adapter, "1e5", "--cache-type", "f32")
    assert proc.returncode == 0, proc.stderr


def test_nan_block_scale_cli(nan_scale_model):
    assert_one_line_error(_run("-m", nan_scale_model), 1, str(nan_scale_model), "non-finite logits",
                          "blk.1.ffn_down (ffn_down)")


def test_library_raises_and_keeps_the_cache(nan_adapter):
    with Model(n_ctx=64, n_threads=2, lora_keep_cache=True) as m:
        ids = m.tokenize("hello world")
        m.eval(ids[:2])
        adapter = m.load_adapter(nan_adapter)
        m.set_adapters({adapter: 1.0})
        with pytest.raises(NonFiniteError, match=r"token position 2; first non-finite node: blk\.0\.attn_qkv "
                                                 r"\(attn_k\) at position 2"):
            m.eval(ids[2:])
        assert m.n_past == 2  # the failed batch is dropped from the cache
        m.set_adapters({})
        rest = m.eval(ids[2:])
    with Model(n_ctx=64, n_threads=2) as fresh:
        np.testing.assert_allclose(rest, fresh.eval(ids)[2:], rtol=1e-4, atol=1e-4)
