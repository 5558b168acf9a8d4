"""`hotlora quantize`, `hotlora export-lora` and `hotlora inspect`, run as a user runs them.

Bounds:
- quantize to Q8_0/Q4_0/Q4_1/Q5_0/Q5_1: byte-identical to gguf.quants.quantize on the same floats.
- export-lora, F32 base: merged logits within 1e-4 × max |logit| of runtime LoRA.
- export-lora, quantized base: each merged tensor is the encoding of dequant(W) + s·B·A, so it dequantizes
  to within half a quantization step of it (Q8_0: |err| ≤ d/2 + |d − half(d)|·127 per element,
  d = amax/127 of its block); logits then stay within QUANT_MERGE_BOUND of runtime LoRA.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

import hotlora as hl
from activations import assert_matches_rounded, roundtrip
from cli_util import assert_one_line_error, hotlora
from factory import ADAPTER_TARGETS, TinySpec, write_tiny_adapter, write_tiny_model
from reference import forward, load_ref_adapter, load_ref_model, merge

Q = gguf.GGMLQuantizationType
TOKENS = [1, 5, 9, 33, 100, 7, 2]
QUANT_MERGE_BOUND = 5e-2


def logits(path, adapters=(), cache_type="f32"):
    with hl.Model(path, n_ctx=32, n_threads=2, cache_type=cache_type) as m:
        m.set_adapters({m.load_adapter(p): s for p, s in adapters})
        return m.eval(TOKENS)


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def tensors(path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


# ---- quantize ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tools") / "f32.gguf", TinySpec(n_embd=256, n_ff=512, n_head=4))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantize_is_byte_identical_to_gguf(tmp_path, f32_model, qtype):
    out = tmp_path / f"{qtype}.gguf"
    proc = hotlora("quantize", f32_model, out, qtype)
    assert proc.returncode == 0, proc.stderr
    src, dst = tensors(f32_model), tensors(out)
    for name, t in src.items():
        if len(t.shape) == 1 or t.shape[1] == 1:
            assert dst[name].tensor_type == Q.F32 and np.array_equal(dst[name].data, t.data)
            continue
        assert dst[name].tensor_type == Q[qtype], name
        assert np.array_equal(np.asarray(dst[name].data), gguf.quants.quantize(np.asarray(t.data), Q[qtype])), name
    assert gguf.GGUFReader(out).get_field("general.file_type").contents() in (7, 2, 3, 8, 9)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_dequantize_close_and_run(tmp_path, f32_model, qtype):
    out = tmp_path / f"{qtype}.gguf"
    assert hotlora("quantize", f32_model, out, qtype).returncode == 0
    src, dst = tensors(f32_model), tensors(out)
    w = np.asarray(src["blk.0.ffn_up.weight"].data)
    back = gguf.quants.dequantize(np.asarray(dst["blk.0.ffn_up.weight"].data), Q[qtype])
    bits = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}[qtype]
    assert np.sqrt(np.mean((back - w) ** 2)) / w.std() < 2.0 ** (1 - bits)  # about one step of 2^bits levels
    types = {n: t.tensor_type.name for n, t in dst.items()}  # the quantized model runs, and computes what it holds
    ref = forward(load_ref_model(out), TOKENS, act_quant=lambda name, x: roundtrip(x, types[name]))
    assert_matches_rounded(logits(out), ref)


def test_q4_k_m_follows_llama_cpp_mix(tmp_path):
    spec = TinySpec(n_embd=256, n_ff=512, n_head=4, n_layer=8)
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    out = tmp_path / "q4km.gguf"
    assert hotlora("quantize", model, out, "q4_k_m").returncode == 0
    got = {n: t.tensor_type.name for n, t in tensors(out).items()}
    more_bits = {i for i in range(8) if i < 1 or i >= 7 or (i - 1) % 3 == 2}  # quants.md §5 with n = 8
    assert more_bits == {0, 3, 6, 7}
    for i in range(8):
        want = "Q6_K" if i in more_bits else "Q4_K"
        assert got[f"blk.{i}.attn_v.weight"] == want and got[f"blk.{i}.ffn_down.weight"] == want
        assert got[f"blk.{i}.attn_q.weight"] == "Q4_K" and got[f"blk.{i}.attn_norm.weight"] == "F32"
    assert got["output.weight"] == "Q6_K" and got["token_embd.weight"] == "Q4_K"
    assert gguf.GGUFReader(out).get_field("general.file_type").contents() == 15
    assert np.all(np.isfinite(logits(out)))


def test_k_quant_falls_back_for_short_rows(tmp_path):
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec())  # n_embd 64: not a multiple of 256
    out = tmp_path / "q4k.gguf"
    assert hotlora("quantize", model, out, "Q4_K").returncode == 0
    assert tensors(out)["blk.0.attn_q.weight"].tensor_type == Q.Q5_0  # quants.md §5: Q4_K -> Q5_0


def test_quantize_an_adapter_to_q8_0(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    adapter = write_tiny_adapter(tmp_path / "a.gguf", spec, ["attn_q", "ffn_up"], rank=32, alpha=32.0)
    out = tmp_path / "a-q8.gguf"
    assert hotlora("quantize", adapter, out, "Q8_0").returncode == 0
    assert {t.tensor_type for t in tensors(out).values()} == {Q.Q8_0}
    assert rel(logits(model, [(out, 1.0)]), logits(model, [(adapter, 1.0)])) < 1e-2


def test_quantize_errors(tmp_path, f32_model):
    assert_one_line_error(hotlora("quantize", f32_model, tmp_path / "x.gguf", "Q9_9"), 2, "Q9_9")
    spec = TinySpec()
    adapter = write_tiny_adapter(tmp_path / "a.gguf", spec, ["attn_q"])
    assert_one_line_error(hotlora("quantize", adapter, tmp_path / "x.gguf", "Q4_K_M"), 1, "plain type")
    assert_one_line_error(hotlora("quantize", tmp_path / "none.gguf", tmp_path / "x.gguf", "Q8_0"), 1, "none.gguf")


# ---- export-lora ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_export_lora_f32_matches_runtime_and_reference(tmp_path, tied):
    spec = TinySpec(tied=tied)
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    a = write_tiny_adapter(tmp_path / "a.gguf", spec, ADAPTER_TARGETS, rank=4, alpha=8.0, seed=1)
    b = write_tiny_adapter(tmp_path / "b.gguf", spec, ["attn_v", "ffn_down"], rank=8, alpha=4.0, seed=2)
    out = tmp_path / "merged.gguf"
    proc = hotlora("export-lora", "-m", model, "--hot-lora", a, "--hot-lora-scaled", b, "0.5", "-o", out)
    assert proc.returncode == 0, proc.stderr
    runtime = logits(model, [(a, 1.0), (b, 0.5)])
    assert rel(logits(out), runtime) <= 1e-4
    ref = forward(merge(load_ref_model(model), [(load_ref_adapter(a), 1.0), (load_ref_adapter(b), 0.5)]), TOKENS)
    assert rel(logits(out), ref) <= 1e-4
    assert "output.weight" in tensors(out)  # an output/token_embd pair unties a tied model


def test_export_lora_requantizes_only_what_it_merges(tmp_path):
    spec = TinySpec(weight_type="Q8_0")
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    a = write_tiny_adapter(tmp_path / "a.gguf", spec, ["attn_q", "ffn_up"], rank=4, alpha=8.0)
    out = tmp_path / "merged.gguf"
    assert hotlora("export-lora", "-m", model, "--hot-lora-scaled", a, "0.7", "-o", out).returncode == 0
    src, dst = tensors(model), tensors(out)
    pairs = load_ref_adapter(a)
    for name, t in src.items():
        if name not in pairs.pairs:
            assert dst[name].tensor_type == t.tensor_type and np.array_equal(dst[name].data, t.data), name
            continue
        assert dst[name].tensor_type == Q.Q8_0
        want = gguf.quants.dequantize(np.asarray(t.data), Q.Q8_0).astype(np.float64)
        lora_a, lora_b = pairs.pairs[name]
        want += 0.7 * pairs.scale(name, 1.0) * (lora_b @ lora_a)
        got = gguf.quants.dequantize(np.asarray(dst[name].data), Q.Q8_0)
        blocks = np.abs(want.astype(np.float32)).reshape(-1, 32).max(axis=1) / 127
        half = blocks.astype(np.float16).astype(np.float64)
        step = np.repeat(blocks * 0.5 * (1 + 1e-5) + np.abs(blocks - half) * 127, 32).reshape(want.shape)
        assert np.all(np.abs(got - want) <= step + 1e-7), name
    assert rel(logits(out), logits(model, [(a, 0.7)])) <= QUANT_MERGE_BOUND


def test_export_lora_errors(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    wrong = write_tiny_adapter(tmp_path / "q.gguf", TinySpec(arch="qwen2"), ["attn_q"])
    assert_one_line_error(hotlora("export-lora", "-m", model, "--hot-lora", wrong, "-o", tmp_path / "o.gguf"), 1,
                          "arch mismatch")
    assert_one_line_error(hotlora("export-lora", "-m", model, "-o", tmp_path / "o.gguf"), 2, "--hot-lora")


# ---- inspect -------------------------------------------------------------------------------------

def test_inspect_model_adapter_and_fit(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    other = write_tiny_model(tmp_path / "big.gguf", TinySpec(n_embd=128, n_ff=128))
    adapter = write_tiny_adapter(tmp_path / "a.gguf", spec, ["attn_q", "output"], rank=4, alpha=8.0)
    shown = hotlora("inspect", model)
    assert shown.returncode == 0 and "blk.0.attn_q.weight" in shown.stdout and "llama.block_count" in shown.stdout
    info = json.loads(hotlora("inspect", adapter, "--model", model, "--json").stdout)
    assert info["kind"] == "adapter" and info["alpha"] == 8.0 and set(info["ranks"].values()) == {4}
    assert info["modules"] == {"attn_q": 2, "output": 1} and info["fit"]["compatible"] is True
    assert 0 < info["fit"]["byte_ratio"] < 1
    bad = hotlora("inspect", adapter, "--model", other)
    assert bad.returncode == 1 and "does not fit" in bad.stdout and "blk.0.attn_q.weight" in bad.stdout
    assert "[128, 128]" in bad.stdout.replace("\n", " ")
    bad_json = json.loads(hotlora("inspect", adapter, "--model", other, "--json").stdout)
    assert bad_json["fit"]["compatible"] is False and len(bad_json["fit"]["problems"]) == 3


def test_inspect_prints_file_text_literally(tmp_path):
    """Metadata that looks like Rich markup is shown as written, not styled or refused."""
    from gguf_edit import rewrite
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_layer=1))
    odd = rewrite(model, tmp_path / "odd.gguf", kv={"general.name": ("[/bold] [red]x", gguf.GGUFValueType.STRING)})
    shown = hotlora("inspect", odd)
    assert shown.returncode == 0 and "[/bold] [red]x" in shown.stdout, shown.stderr
