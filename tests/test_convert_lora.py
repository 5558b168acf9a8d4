"""`hotlora convert-lora`: PEFT adapters (and legacy ggla files) to llama.cpp's adapter GGUF (lora.md §2, §6, §8).

The oracle is tests/hf_llama.py: random HF-layout LLaMA / Qwen2 weights and PEFT adapters in float64, run with
HF's forward pass (rotate-half RoPE on un-permuted q/k) and PEFT's formula `W + s·B@A` with PEFT's per-module
scale (rank_pattern / alpha_pattern / rsLoRA). The base GGUF is written the way llama.cpp's converter writes it
(q/k rows permuted for llama); the adapter goes through `python -m hotlora convert-lora` and is run by the engine
(`Model.load_adapter` + `set_adapters`, F32 KV cache, 2 threads).

Bounds, as max |engine − reference| / max |reference logit|; every comparison also checks that the adapter moves
the logits by at least MIN_EFFECT (these adapters move them by 58–73 % of max |logit|, a strong fine-tune):
- F32_BOUND = 1e-4 (f32 output): float32 accumulation only, as tests/test_lora.py. Measured ≤ 5.2e-7.
- F16_BOUND = 1e-3: f16's unit roundoff is 2^-11 ≈ 4.9e-4 on each adapter element (the scale is folded in
  before rounding, so nothing else changes); the logit error is that times the adapter's share of the logits
  (≈ 0.6–0.7 here). Measured 2.0e-4 (llama GQA) and 1.2e-4 (qwen2 tied).
- BF16_BOUND = 1e-2: bf16 keeps 8 significant bits, roundoff 2^-8 ≈ 3.9e-3, same argument. Measured 3.1e-3 / 1.6e-3.
- Q8_0_BOUND = 1.5e-2: Q8_0 rounds each element to 1/254 of its 32-block's max |x| and, as for any Q8_0 weight,
  the engine also rounds the product's input (x before lora_a, A·x before a Q8_0 lora_b) to Q8_0
  (tests/test_lora.py); lora_b of rank r % 32 != 0 (and token_embd's transposed lora_a) are F16.
  Measured 5.5e-3 / 2.6e-3.
- ggla converted vs ggla loaded directly: GGLA_BOUND = 1e-6 (same F32 values, same per-pair scale).
All refusals are checked in a subprocess: exit 1, one `error:` line naming the file/tensor, no traceback.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import gguf
import numpy as np
import pytest

import hotlora
from factory import N_VOCAB, TinySpec, tiny_adapter_pairs, write_ggla_adapter, write_tiny_model
from hf_llama import (HFConfig, PeftAdapter, forward, linear_modules, make_peft_adapter, pattern_value,
                      random_model, write_gguf)
from hotlora.convert import convert_peft, get_pattern_key, permute_rows
from cli_util import assert_one_line_error, hotlora as cli

F32_BOUND = 1e-4
F16_BOUND = 1e-3
BF16_BOUND = 1e-2
Q8_0_BOUND = 1.5e-2
GGLA_BOUND = 1e-6
MIN_EFFECT = 0.05
TOKENS = np.random.default_rng(1).integers(0, N_VOCAB, size=9).tolist()

LLAMA = HFConfig()                                     # GQA: 4 query heads, 2 KV heads, untied
QWEN2 = HFConfig(arch="qwen2", tied=True)              # q/k/v biases, NEOX RoPE, tied head
# ranks per module differ (k_proj 4, layers.1 down_proj 12, o_proj 32), alphas too (v_proj 32, lm_head 4)
RANK_PATTERN = {"k_proj": 4, "model.layers.1.mlp.down_proj": 12, "o_proj": 32}
ALPHA_PATTERN = {"v_proj": 32, "lm_head": 4}


def all_modules(cfg: HFConfig) -> list[str]:
    return ["model.embed_tokens"] + linear_modules(cfg)


def rel_error(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def convert(src, base, *extra) -> subprocess.CompletedProcess:
    proc = cli("convert-lora", src, "--model", base, *extra)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def engine_logits(base, adapters=()) -> np.ndarray:
    with hotlora.Model(base, n_ctx=64, n_threads=2, cache_type="f32") as m:
        if adapters:
            m.set_adapters({m.load_adapter(path): scale for path, scale in adapters})
        return m.eval(TOKENS).astype(np.float64)


def tensors_of(path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def values_of(path) -> dict[str, np.ndarray]:
    """name -> float array in numpy orientation (ne reversed), dequantized."""
    return {name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(list(reversed([int(d) for d in t.shape])))
            for name, t in tensors_of(path).items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Base GGUFs (llama GQA, qwen2 tied) and PEFT adapters, with their HF weights for the oracle."""
    tmp = tmp_path_factory.mktemp("convert_lora")
    out = {"tmp": tmp}
    for key, cfg in (("llama", LLAMA), ("qwen2", QWEN2)):
        weights = random_model(cfg, seed=0 if key == "llama" else 5)
        out[key] = (cfg, weights, write_gguf(tmp / f"{key}.gguf", cfg, weights))
        patterns = make_peft_adapter(cfg, all_modules(cfg), r=8, lora_alpha=16, rank_pattern=RANK_PATTERN,
                                     alpha_pattern=ALPHA_PATTERN, seed=3, b_std=0.05)
        out[f"{key}-patterns"] = (patterns, patterns.save(tmp / f"{key}-patterns"))
    rslora = make_peft_adapter(LLAMA, all_modules(LLAMA)[::2] + ["lm_head"], r=16, lora_alpha=8,
                               rank_pattern={"q_proj": 8, "up_proj": 32}, alpha_pattern={"gate_proj": 24},
                               use_rslora=True, seed=4, b_std=0.05)
    out["llama-rslora"] = (rslora, rslora.save(tmp / "llama-rslora"))
    return out


# ----------------------------------------------------------------------------------------------------------
# PEFT semantics
# ----------------------------------------------------------------------------------------------------------

def test_pattern_key_is_peft_suffix_regex():
    module = "model.layers.1.mlp.down_proj"
    assert get_pattern_key({"down_proj": 1}, module) == "down_proj"
    assert get_pattern_key({"layers.1.mlp.down_proj": 1}, module) == "layers.1.mlp.down_proj"
    assert get_pattern_key({module: 1}, module) == module
    assert get_pattern_key({"proj": 1, "own_proj": 2}, module) is None          # must follow a dot
    assert get_pattern_key({"layers.0.mlp.down_proj": 1}, module) is None
    assert get_pattern_key({r"layers\.\d+\.mlp\.down_proj": 1}, module) == r"layers\.\d+\.mlp\.down_proj"
    assert get_pattern_key({"mlp.down_proj": 1, "down_proj": 2}, module) == "mlp.down_proj"  # first in order
    assert get_pattern_key({"lm_head": 1}, "lm_head") == "lm_head"
    # the oracle's adapters use exactly these per-module values
    assert pattern_value(RANK_PATTERN, "model.layers.0.self_attn.k_proj", 8) == 4
    assert pattern_value(RANK_PATTERN, "model.layers.0.mlp.down_proj", 8) == 8
    assert pattern_value(RANK_PATTERN, "model.layers.1.mlp.down_proj", 8) == 12


def test_permute_rows_matches_the_spec_loop():
    from hf_llama import hf_to_gguf_rows
    b = np.arange(32 * 3, dtype=np.float64).reshape(32, 3)
    for heads in (1, 2, 4):
        assert np.array_equal(permute_rows(b, heads), hf_to_gguf_rows(b, heads))


# ----------------------------------------------------------------------------------------------------------
# Round trip: PEFT -> convert-lora -> engine == HF + PEFT formula
# ----------------------------------------------------------------------------------------------------------

ROUNDTRIP = {
    "llama_gqa_patterns": ("llama", [("llama-patterns", 1.0)]),
    "llama_rslora": ("llama", [("llama-rslora", 1.0)]),
    "qwen2_tied_patterns": ("qwen2", [("qwen2-patterns", 1.0)]),
    "llama_two_adapters": ("llama", [("llama-patterns", 0.5), ("llama-rslora", -1.0)]),
}


@pytest.mark.parametrize("case", ROUNDTRIP, ids=list(ROUNDTRIP))
def test_roundtrip_f32(world, case):
    base_key, adapters = ROUNDTRIP[case]
    cfg, weights, base = world[base_key]
    converted = []
    for key, scale in adapters:
        adapter, directory = world[key]
        out = world["tmp"] / f"{case}-{key}.gguf"
        convert(directory, base, "-o", out)
        converted.append((out, scale))
    ref_base = forward(cfg, weights, TOKENS)
    ref = forward(cfg, weights, TOKENS, [(world[key][0], scale) for key, scale in adapters])
    assert rel_error(engine_logits(base), ref_base) <= F32_BOUND        # the base file and oracle agree
    assert rel_error(ref, ref_base) >= MIN_EFFECT
    assert rel_error(engine_logits(base, converted), ref) <= F32_BOUND


def test_written_keys_and_shapes(world):
    """lora.md §2.1 keys in llama.cpp's order; §2.2 shapes; scales folded into lora_b only where PEFT's scale
    differs from alpha / r; q/k lora_b permuted, lora_a untouched."""
    cfg, _, base = world["llama"]
    adapter, directory = world["llama-patterns"]
    out = world["tmp"] / "keys.gguf"
    convert(directory, base, "-o", out)
    reader = gguf.GGUFReader(out)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert keys == ["general.architecture", "general.type", "adapter.type", "general.name", "adapter.lora.alpha",
                    "general.quantization_version"]
    field = reader.get_field("adapter.lora.alpha")
    assert field.types[0] == gguf.GGUFValueType.FLOAT32 and field.contents() == 16.0
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("general.name").contents() == "Llama Patterns"
    values = values_of(out)
    assert len(values) == 2 * len(adapter.pairs())
    pairs = adapter.pairs()
    a, b = pairs["model.embed_tokens"]
    assert np.array_equal(values["token_embd.weight.lora_a"], a.T.astype(np.float32))       # A transposed
    assert np.array_equal(values["token_embd.weight.lora_b"], b.astype(np.float32))
    a, b = pairs["model.layers.0.self_attn.q_proj"]
    assert np.array_equal(values["blk.0.attn_q.weight.lora_a"], a.astype(np.float32))
    expected = b.reshape(cfg.heads, 2, cfg.head_dim // 2, 8).swapaxes(1, 2).reshape(b.shape)
    assert np.array_equal(values["blk.0.attn_q.weight.lora_b"], expected.astype(np.float32))
    a, b = pairs["model.layers.1.self_attn.v_proj"]       # alpha 32 vs written 16: B doubled
    assert np.allclose(values["blk.1.attn_v.weight.lora_b"], 2 * b, rtol=1e-6, atol=0)
    a, b = pairs["lm_head"]                                # alpha 4: B quartered
    assert np.allclose(values["output.weight.lora_b"], b / 4, rtol=1e-6, atol=0)
    assert values["blk.0.attn_k.weight.lora_b"].shape == (cfg.kv_heads * cfg.head_dim, 4)


def test_default_output_name_and_summary(world):
    _, _, base = world["qwen2"]
    src = world["tmp"] / "my-adapter"
    shutil.copytree(world["qwen2-patterns"][1], src)
    proc = convert(src, base, "--outtype", "F16")
    out = src / "my-adapter-F16-LoRA.gguf"
    assert out.is_file()
    last = proc.stderr.strip().splitlines()[-1]
    n_tensors = 2 * len(world["qwen2-patterns"][0].pairs())
    assert last.startswith(f"wrote {out} ({n_tensors} tensors, ") and last.endswith(" MiB)")
    assert "blk.*.attn_v" in proc.stderr and "x2" in proc.stderr        # folded alpha_pattern factor shown
    assert gguf.GGUFReader(out).get_field("general.architecture").contents() == "qwen2"


# ----------------------------------------------------------------------------------------------------------
# --outtype
# ----------------------------------------------------------------------------------------------------------

OUTTYPE_BOUNDS = {"f16": F16_BOUND, "bf16": BF16_BOUND, "q8_0": Q8_0_BOUND}


@pytest.mark.parametrize("base_key", ["llama", "qwen2"])
@pytest.mark.parametrize("outtype", list(OUTTYPE_BOUNDS))
def test_outtype(world, base_key, outtype):
    cfg, weights, base = world[base_key]
    adapter, directory = world[f"{base_key}-patterns"]
    out = world["tmp"] / f"{base_key}-{outtype}.gguf"
    proc = convert(directory, base, "-o", out, "--outtype", outtype)
    tensors = tensors_of(out)
    n_f16 = 0
    for name, t in tensors.items():
        row = int(t.shape[0])
        want = "F16" if outtype == "q8_0" and row % 32 else outtype.upper()
        n_f16 += want == "F16"
        assert t.tensor_type.name == want, (name, row)
    if outtype == "q8_0":   # both kinds occur: A (n_in 64/96) and o_proj's B (rank 32) are Q8_0
        assert f"note: q8_0 needs rows of a multiple of 32 elements: {n_f16} tensor(s) with rows of 4, 8, 12" \
            in proc.stderr
        assert tensors["blk.0.attn_q.weight.lora_a"].tensor_type.name == "Q8_0"
        assert tensors["blk.0.attn_output.weight.lora_b"].tensor_type.name == "Q8_0"
        assert tensors["blk.0.attn_q.weight.lora_b"].tensor_type.name == "F16"
    ref = forward(cfg, weights, TOKENS, [(adapter, 1.0)])
    assert rel_error(ref, forward(cfg, weights, TOKENS)) >= MIN_EFFECT
    assert rel_error(engine_logits(base, [(out, 1.0)]), ref) <= OUTTYPE_BOUNDS[outtype]


def test_bf16_safetensors_input(world, tmp_path):
    """numpy has no bfloat16: such files are read by hand and widened exactly."""
    cfg, _, base = world["llama"]
    adapter = make_peft_adapter(cfg, ["model.layers.0.self_attn.q_proj"], r=8, seed=9)
    header, blobs, offset = {}, [], 0
    for name, value in adapter.tensors.items():
        bits = (value.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)   # truncation to bf16
        adapter.tensors[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + bits.nbytes]}
        blobs.append(bits.tobytes())
        offset += bits.nbytes
    directory = tmp_path / "bf16"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(adapter.config))
    raw = json.dumps(header).encode()
    (directory / "adapter_model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    report = convert_peft(directory, base, tmp_path / "bf16.gguf")
    values = values_of(report.out)
    a, _ = adapter.pairs()["model.layers.0.self_attn.q_proj"]
    assert np.array_equal(values["blk.0.attn_q.weight.lora_a"], a.astype(np.float32))


# ----------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------

P = "base_model.model."
Q_PROJ = P + "model.layers.0.self_attn.q_proj"


def _small_adapter() -> PeftAdapter:
    return make_peft_adapter(LLAMA, ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                     "model.layers.1.mlp.up_proj"], r=8, seed=11)


def _set(**config):
    def edit(adapter: PeftAdapter) -> None:
        adapter.config.update(config)
    return edit


def _add(name: str, shape):
    def edit(adapter: PeftAdapter) -> None:
        adapter.tensors[name] = np.ones(shape, np.float32)
    return edit


def _drop(name: str):
    def edit(adapter: PeftAdapter) -> None:
        del adapter.tensors[name]
    return edit


def _rename(old: str, new: str):
    def edit(adapter: PeftAdapter) -> None:
        adapter.tensors[new] = adapter.tensors.pop(old)
    return edit


def _reshape_a(name: str, n_in: int):
    def edit(adapter: PeftAdapter) -> None:
        adapter.tensors[name] = np.ones((adapter.tensors[name].shape[0], n_in), np.float32)
    return edit


REFUSALS = {
    "dora_config": (_set(use_dora=True), ("use_dora", "DoRA", "merge_and_unload")),
    "dora_tensor": (_add(Q_PROJ + ".lora_magnitude_vector", (64,)), ("DoRA", "lora_magnitude_vector")),
    "modules_to_save_config": (_set(modules_to_save=["lm_head", "embed_tokens"]), ("modules_to_save", "lm_head")),
    "full_weight_tensor": (_add(P + "model.embed_tokens.weight", (N_VOCAB, 64)),
                           ("model.embed_tokens.weight", "full weight", "modules_to_save")),
    "full_lm_head": (_add(P + "lm_head.weight", (N_VOCAB, 64)), ("lm_head.weight", "full weight")),
    "bias_config": (_set(bias="lora_only"), ("bias 'lora_only'", "bias='none'")),
    "lora_bias_config": (_set(lora_bias=True), ("lora_bias",)),
    "lora_b_bias_tensor": (_add(Q_PROJ + ".lora_B.bias", (64,)), ("q_proj.lora_B.bias", "trained bias")),
    "fan_in_fan_out": (_set(fan_in_fan_out=True), ("fan_in_fan_out",)),
    "not_lora": (_set(peft_type="IA3"), ("peft_type 'IA3'",)),
    "unmappable_module": (_rename(Q_PROJ + ".lora_B.weight", P + "model.layers.0.self_attn.qkv_proj.lora_B.weight"),
                          ("model.layers.0.self_attn.qkv_proj", "cannot be mapped")),
    "missing_half": (_drop(P + "model.layers.0.self_attn.v_proj.lora_B.weight"),
                     ("model.layers.0.self_attn.v_proj", "missing one component", "lora_B")),
    "shape_mismatch": (_reshape_a(Q_PROJ + ".lora_A.weight", 96),
                       ("blk.0.attn_q.weight", "(64, 96)", "(64, 64)", "wrong base model")),
    "rank_vs_config": (_set(r=16), ("model.layers.0.self_attn.q_proj", "rank 8", "r = 16")),
    "no_such_layer": (_rename(Q_PROJ + ".lora_A.weight", P + "model.layers.5.self_attn.q_proj.lora_A.weight"),
                      ("blk.5.attn_q.weight", "does not exist in base model")),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusal(world, tmp_path, case):
    edit, needles = REFUSALS[case]
    adapter = _small_adapter()
    edit(adapter)
    if case == "no_such_layer":   # give the renamed A its partner
        b = adapter.tensors.pop(Q_PROJ + ".lora_B.weight")
        adapter.tensors[P + "model.layers.5.self_attn.q_proj.lora_B.weight"] = b
    directory = adapter.save(tmp_path / case)
    proc = cli("convert-lora", directory, "--model", world["llama"][2], "-o", tmp_path / "out.gguf")
    assert_one_line_error(proc, 1, *needles)
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out.gguf.tmp").exists()


def test_refusal_bin_needs_torch(world, tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed: .bin adapters are read with it")
    except ImportError:
        pass
    directory = _small_adapter().save(tmp_path / "bin")
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")
    proc = cli("convert-lora", directory, "--model", world["llama"][2])
    assert_one_line_error(proc, 1, "adapter_model.bin", "needs torch", "safetensors")


def test_refusal_no_config(world, tmp_path):
    directory = _small_adapter().save(tmp_path / "noconfig")
    (directory / "adapter_config.json").unlink()
    assert_one_line_error(cli("convert-lora", directory, "--model", world["llama"][2]), 1, "adapter_config.json")


def test_refusal_wrong_arch_shapes(world, tmp_path):
    """A qwen2 adapter on the llama base: its lm_head fits, but nothing else must be silently accepted."""
    adapter = make_peft_adapter(HFConfig(hidden=32, heads=2, kv_heads=1, ffn=64), ["model.layers.0.mlp.up_proj"])
    proc = cli("convert-lora", adapter.save(tmp_path / "small"), "--model", world["llama"][2])
    assert_one_line_error(proc, 1, "blk.0.ffn_up.weight", "(64, 32)", "(96, 64)")


def test_usage_errors(world, tmp_path):
    directory = world["llama-patterns"][1]
    proc = cli("convert-lora", directory, "--model", world["llama"][2], "--outtype", "q4_0")
    assert_one_line_error(proc, 2, "--outtype")
    proc = cli("convert-lora", directory, "--model", world["llama"][2], "--ggla-from-peft")
    assert_one_line_error(proc, 1, "--ggla-from-peft", "ggla files only")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an adapter")
    assert_one_line_error(cli("convert-lora", junk, "--model", world["llama"][2]), 1, "junk.bin",
                          "neither a PEFT adapter directory nor a legacy ggla file")


# ----------------------------------------------------------------------------------------------------------
# Legacy ggla
# ----------------------------------------------------------------------------------------------------------

def test_ggla_to_gguf_same_logits(tmp_path):
    """Mixed ranks (4 and 8) under one header r: both paths take each pair's rank from its tensors."""
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "tiny.gguf", spec)
    pairs = {**tiny_adapter_pairs(spec, ("attn_q", "attn_k", "ffn_down", "token_embd"), rank=4, seed=1),
             **tiny_adapter_pairs(spec, ("attn_v", "ffn_up", "output"), rank=8, seed=2)}
    ggla = write_ggla_adapter(tmp_path / "legacy.bin", pairs, alpha=12, rank_header=4)
    proc = convert(ggla, model)
    out = tmp_path / "legacy.gguf"                       # default: the input with a .gguf suffix
    assert out.is_file() and proc.stderr.strip().splitlines()[-1].startswith(f"wrote {out}")
    direct = engine_logits(model, [(ggla, 1.0)])
    assert rel_error(direct, engine_logits(model)) >= MIN_EFFECT
    assert rel_error(engine_logits(model, [(out, 1.0)]), direct) <= GGLA_BOUND
    assert gguf.GGUFReader(out).get_field("adapter.lora.alpha").contents() == 12.0


def test_ggla_from_peft_equals_peft_conversion(world, tmp_path):
    """The old PEFT converter wrote B un-permuted (lora.md §8): --ggla-from-peft must give the same file
    contents as converting the PEFT directory, and without it the q/k deltas are wrong."""
    cfg, weights, base = world["llama"]
    adapter = make_peft_adapter(cfg, linear_modules(cfg), r=8, lora_alpha=16, seed=21, b_std=0.05)
    directory = adapter.save(tmp_path / "peft")
    names = {"model.layers.{}.self_attn.q_proj": "attn_q", "model.layers.{}.self_attn.k_proj": "attn_k",
             "model.layers.{}.self_attn.v_proj": "attn_v", "model.layers.{}.self_attn.o_proj": "attn_output",
             "model.layers.{}.mlp.gate_proj": "ffn_gate", "model.layers.{}.mlp.up_proj": "ffn_up",
             "model.layers.{}.mlp.down_proj": "ffn_down"}
    ggla_pairs = {}
    for module, (a, b) in adapter.pairs().items():
        if module == "lm_head":
            ggla_pairs["output.weight"] = (a, b)
            continue
        layer = int(module.split(".")[2])
        template = module.replace(f".{layer}.", ".{}.", 1)
        ggla_pairs[f"blk.{layer}.{names[template]}.weight"] = (a, b)
    ggla = write_ggla_adapter(tmp_path / "old.bin", ggla_pairs, alpha=16, rank_header=8)
    convert(directory, base, "-o", tmp_path / "peft.gguf")
    convert(ggla, base, "-o", tmp_path / "fixed.gguf", "--ggla-from-peft")
    convert(ggla, base, "-o", tmp_path / "asis.gguf")
    peft_values, fixed_values = values_of(tmp_path / "peft.gguf"), values_of(tmp_path / "fixed.gguf")
    assert sorted(peft_values) == sorted(fixed_values)
    for name in peft_values:
        assert np.array_equal(peft_values[name], fixed_values[name]), name
    ref = forward(cfg, weights, TOKENS, [(adapter, 1.0)])
    assert rel_error(engine_logits(base, [(tmp_path / "fixed.gguf", 1.0)]), ref) <= F32_BOUND
    assert rel_error(engine_logits(base, [(tmp_path / "asis.gguf", 1.0)]), ref) > 100 * F32_BOUND
