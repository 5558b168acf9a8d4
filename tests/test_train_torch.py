"""Two training steps of hotlora finetune equal PyTorch + PEFT's on the same tiny model and state.

The base is a Hugging Face-layout model (tests/hf_llama.py) written as GGUF for hotlora (q/k rows permuted for
llama) and loaded into transformers' LlamaForCausalLM / Qwen2ForCausalLM; PEFT wraps it with the same LoRA
(rank, alpha, every target), both start from the same random nonzero A and B, see the same tokens (some
positions without loss) and step with AdamW at the same learning rate, weight decay and a clipping threshold
that clips. Gradients, losses and the updated A and B agree within float32 tolerance.

Needs `pip install ".[train-compare]"` (torch's CPU wheel, transformers, peft); skipped with the reason without.
"""
from __future__ import annotations

import numpy as np
import pytest

from hotlora.convert import permute_rows
from hotlora.model import Model
from hotlora.train.data import Dataset, Window
from hotlora.train.loop import Trainer, TrainOptions

from hf_llama import HFConfig, random_model, write_gguf

torch = transformers = peft = None   # imported by the `frameworks` fixture, not at collection: torch alone
                                     # adds ~300 MB to the pytest process's peak RSS, which other tests measure


@pytest.fixture(autouse=True)
def frameworks():
    global torch, transformers, peft
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[train-compare]')")
    transformers = pytest.importorskip("transformers",
                                       reason="transformers is not installed (pip install '.[train-compare]')")
    peft = pytest.importorskip("peft", reason="PEFT is not installed (pip install '.[train-compare]')")

TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
GGUF_KIND = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate", "ffn_up": "up",
             "ffn_down": "down"}
RANK, ALPHA, LR, WD, CLIP = 4, 8.0, 1e-2, 0.1, 0.05
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecations


def _hf_model(cfg: HFConfig, w: dict[str, np.ndarray]):
    kwargs = dict(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
                  num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                  rms_norm_eps=cfg.rms_eps, max_position_embeddings=256, tie_word_embeddings=cfg.tied)
    if cfg.arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in w.items()}, strict=not cfg.tied)
    return model.float().eval()


def _peft_module(name: str) -> str:
    """blk.1.attn_q.weight -> model.layers.1.self_attn.q_proj"""
    _, layer, kind, _ = name.split(".")
    return f"model.layers.{layer}.{TARGETS[GGUF_KIND[kind]]}"


def _hotlora_b(cfg: HFConfig, name: str, b: np.ndarray) -> np.ndarray:
    """B in llama.cpp's q/k row order."""
    kind = name.split(".")[2]
    if cfg.arch == "llama" and kind in ("attn_q", "attn_k"):
        return permute_rows(b, cfg.heads if kind == "attn_q" else cfg.kv_heads)
    return b


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_two_steps_match_pytorch_and_peft(arch, tmp_path):
    cfg = HFConfig(arch=arch)
    w = random_model(cfg, seed=11)
    base = write_gguf(tmp_path / "base.gguf", cfg, w)
    rng = np.random.default_rng(5)
    seq = rng.integers(0, cfg.vocab, 17).astype(np.int32)
    tokens, targets = seq[:-1].copy(), seq[1:].copy()
    targets[[0, 5]] = -1

    hf = peft.get_peft_model(_hf_model(cfg, w), peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=[m.split(".")[1]
                                                                                  for m in TARGETS.values()]))
    with Model(base, n_ctx=8, n_threads=1, repack=False) as model:
        window = Window(tokens, targets, 0)
        trainer = Trainer(model, Dataset(base, [window], [], len(seq)),
                          TrainOptions(rank=RANK, alpha=ALPHA, steps=1000, warmup=0, lr=LR, weight_decay=WD,
                                       clip=CLIP, ctx=32), 1)
        modules = dict(hf.base_model.model.named_modules())
        lora = []
        for name, a, b in zip(trainer.params.names, trainer.params.a, trainer.params.b):
            module = modules[_peft_module(name)]
            a_hf = rng.normal(0, 0.2, a.shape).astype(np.float32)
            b_hf = rng.normal(0, 0.2, b.shape).astype(np.float32)
            module.lora_A["default"].weight.data = torch.tensor(a_hf)
            module.lora_B["default"].weight.data = torch.tensor(b_hf)
            a[...] = a_hf
            b[...] = _hotlora_b(cfg, name, b_hf)
            lora.append((name, module))
        params = [m.lora_A["default"].weight for _, m in lora] + [m.lora_B["default"].weight for _, m in lora]
        opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
        noise_a = [np.zeros(a.shape, bool) for a in trainer.params.a]
        noise_b = [np.zeros(b.shape, bool) for b in trainer.params.b]
        for step in range(2):
            report = trainer.step()
            opt.zero_grad()
            logits = hf(input_ids=torch.tensor(tokens[None].astype(np.int64))).logits[0]
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets.astype(np.int64)),
                                                     ignore_index=-1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            for group in opt.param_groups:
                group["lr"] = report.lr
            opt.step()
            assert report.loss == pytest.approx(loss.item(), rel=1e-5)
            for i, ((name, module), a, b, ga, gb) in enumerate(zip(lora, trainer.params.a, trainer.params.b,
                                                                    trainer.grad_a, trainer.grad_b)):
                a_t, b_t = module.lora_A["default"].weight, module.lora_B["default"].weight
                ga_t, gb_t = a_t.grad.numpy(), _hotlora_b(cfg, name, b_t.grad.numpy())
                scale = float(np.abs(ga_t).max() + np.abs(gb_t).max())
                assert np.allclose(ga, ga_t, atol=1e-4 * scale, rtol=1e-3), (step, name, "grad A")
                assert np.allclose(gb, gb_t, atol=1e-4 * scale, rtol=1e-3), (step, name, "grad B")
                # Adam moves every element by about lr whatever its gradient's size, so an element whose gradient
                # is at float32 noise level (|g| < 1e-5 of the largest, near eps) may move differently: those
                # are excluded from the comparison of the weights, and must be rare.
                noise_a[i] |= np.abs(ga_t) < 1e-5 * scale
                noise_b[i] |= np.abs(gb_t) < 1e-5 * scale
                for what, mine, theirs, noise in (("A", a, a_t.detach().numpy(), noise_a[i]),
                                                  ("B", b, _hotlora_b(cfg, name, b_t.detach().numpy()), noise_b[i])):
                    assert np.allclose(mine[~noise], theirs[~noise], atol=LR * 1e-3, rtol=0), (step, name, what)
        assert sum(int(n.sum()) for n in noise_a + noise_b) < 1e-3 * sum(n.size for n in noise_a + noise_b)
        trainer.close()


def test_the_peft_dir_loads_in_peft_with_the_logits_of_the_gguf_adapter(tmp_path):
    """--peft-dir output, loaded by PEFT on the Hugging Face model, gives the logits hotlora gives with the GGUF
    adapter (llama: the q/k rows were un-permuted correctly)."""
    from hotlora.train.export import write_gguf_adapter, write_peft_dir

    cfg = HFConfig(arch="llama")
    w = random_model(cfg, seed=12)
    base = write_gguf(tmp_path / "base.gguf", cfg, w)
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, cfg.vocab, 12).tolist()
    with Model(base, n_ctx=32, n_threads=1, repack=False) as model:
        trainer = Trainer(model, Dataset(base, [Window(np.array(tokens, np.int32), np.array(tokens, np.int32), 0)],
                                         [], 12), TrainOptions(rank=RANK, alpha=ALPHA, steps=1, ctx=32), 1)
        for x in trainer.params.a + trainer.params.b:
            x[...] = rng.normal(0, 0.2, x.shape)
        write_gguf_adapter(trainer.params, model, tmp_path / "a.gguf")
        write_peft_dir(trainer.params, model, tmp_path / "peft")
        trainer.close()
        model.set_adapters({model.load_adapter(tmp_path / "a.gguf"): 1.0})
        ours = model.eval(tokens)
    hf = peft.PeftModel.from_pretrained(_hf_model(cfg, w), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([tokens])).logits[0].numpy()
    assert np.allclose(ours, theirs, atol=2e-3 * np.abs(theirs).max()), np.abs(ours - theirs).max()
