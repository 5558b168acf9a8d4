"""`--hot-lora DIR` and `Model.load_adapter(DIR)`: a PEFT adapter directory converted in memory by the code of
`hotlora convert-lora` (hotlora.convert), with no file written.

The oracle is convert-lora itself: the directory loaded directly must give the same tensors (type, shape, bytes,
alpha) and bitwise the same logits as convert-lora's F32 output loaded as a GGUF adapter. A broken directory is
one `error:` line naming the directory and the offending file or key.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import hotlora
from cli_util import assert_one_line_error, hotlora as cli
from factory import N_VOCAB
from hf_llama import HFConfig, linear_modules, make_peft_adapter, random_model, write_gguf
from hotlora.adapters import read_adapter_file

TOKENS = np.random.default_rng(2).integers(0, N_VOCAB, size=7).tolist()
CONFIGS = {"llama": HFConfig(), "qwen2": HFConfig(arch="qwen2", tied=True)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Per arch: a base GGUF, a PEFT directory (rank and alpha patterns, embedding and head pairs) and the
    directory converted by `hotlora convert-lora` (F32, the default)."""
    tmp = tmp_path_factory.mktemp("peft_dir")
    out = {}
    for arch, cfg in CONFIGS.items():
        base = write_gguf(tmp / f"{arch}.gguf", cfg, random_model(cfg, seed=7))
        modules = ["model.embed_tokens"] + linear_modules(cfg)
        peft = make_peft_adapter(cfg, modules, r=8, lora_alpha=16, rank_pattern={"k_proj": 4, "o_proj": 32},
                                 alpha_pattern={"v_proj": 32}, seed=9, b_std=0.05).save(tmp / f"{arch}-peft")
        gguf_out = tmp / f"{arch}-converted.gguf"
        proc = cli("convert-lora", peft, "--model", base, "-o", gguf_out)
        assert proc.returncode == 0, proc.stderr
        out[arch] = (base, peft, gguf_out)
    return out


def _logits_and_tensors(base, adapter, scale: float):
    with hotlora.Model(base, n_ctx=32, n_threads=2, cache_type="f32") as m:
        loaded = m.load_adapter(adapter)
        m.set_adapters({loaded: scale})
        tensors = {(p.base, half): (matrix.type_name, matrix.ne, bytes(matrix.data))
                   for p in loaded.file.pairs for half, matrix in (("a", p.a), ("b", p.b))}
        return m.eval(TOKENS), tensors, loaded.file.alpha, loaded.name


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_directory_equals_converted_file(world, arch):
    base, peft, converted = world[arch]
    from_dir, dir_tensors, dir_alpha, dir_name = _logits_and_tensors(base, peft, 0.75)
    from_file, file_tensors, file_alpha, file_name = _logits_and_tensors(base, converted, 0.75)
    assert dir_tensors == file_tensors and len(dir_tensors) == 2 * (1 + 7 * CONFIGS[arch].layers + 1)
    assert {t for t, _, _ in dir_tensors.values()} == {"F32"}
    assert (dir_alpha, dir_name) == (file_alpha, file_name) == (16.0, f"{arch.title()} Peft")
    assert np.array_equal(from_dir, from_file)
    with hotlora.Model(base, n_ctx=32, n_threads=2, cache_type="f32") as m:
        assert not np.allclose(m.eval(TOKENS), from_dir, atol=1e-3)   # the adapter does something
    assert sorted(p.name for p in peft.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_cli_hot_lora_directory(world):
    base, peft, converted = world["llama"]

    def run(*adapter_args):
        proc = cli("run", "-m", base, *adapter_args, "-p", "hello", "-n", "6", "--temp", "0", "--ignore-eos",
                   "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    for option in (("--hot-lora", "{}"), ("--hot-lora-scaled", "{}", "0.5")):
        from_dir = run(*(a.format(peft) for a in option))
        from_file = run(*(a.format(converted) for a in option))
        assert from_dir["tokens"] == from_file["tokens"]
        assert from_dir["adapters"][0]["path"] == str(peft)
    assert run()["tokens"] != from_dir["tokens"]


def _broken(world, tmp_path, edit):
    peft = world["llama"][1]
    broken = tmp_path / "broken-peft"
    broken.mkdir()
    for f in peft.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    edit(broken)
    return broken


def _set_config(**values):
    def edit(directory):
        config = json.loads((directory / "adapter_config.json").read_text())
        (directory / "adapter_config.json").write_text(json.dumps({**config, **values}))
    return edit


BROKEN = {
    "no_config": (lambda d: (d / "adapter_config.json").unlink(), ("broken-peft", "adapter_config.json")),
    "dora": (_set_config(use_dora=True), ("broken-peft/adapter_config.json", "use_dora")),
    "rank": (_set_config(r=16), ("broken-peft/adapter_model.safetensors", "rank 8", "r = 16")),
    "no_weights": (lambda d: (d / "adapter_model.safetensors").unlink(), ("broken-peft", "adapter_model.safetensors")),
    "bad_weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x08" + bytes(20)),
                    ("broken-peft/adapter_model.safetensors",)),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_directory_is_one_line_error(world, tmp_path, case):
    edit, needles = BROKEN[case]
    broken = _broken(world, tmp_path, edit)
    before = sorted(broken.iterdir())
    proc = cli("run", "-m", world["llama"][0], "--hot-lora", broken, "-p", "hi", "-n", "1")
    assert_one_line_error(proc, 1, *needles)
    assert sorted(broken.iterdir()) == before   # nothing written beside the adapter


def test_directory_needs_a_base(world):
    with pytest.raises(hotlora.HotLoraError, match="PEFT adapter directory"):
        read_adapter_file(world["llama"][1], "llama", 2)
