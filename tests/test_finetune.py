"""hotlora finetune: data windows and masks, the schedule, clipping, AdamW, accumulation, checkpoints and resume,
Ctrl-C, bad inputs, the outputs (GGUF adapter, PEFT directory) and a short real training run on a tiny model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hotlora.convert import convert_peft
from hotlora.gguf_io import GGUFFile
from hotlora.model import Model
from hotlora.train import checkpoint as ckpt
from hotlora.train.data import load_dataset, windows
from hotlora.train.finetune import Outputs, finetune
from hotlora.train.loop import Trainer, TrainOptions
from hotlora.train.optim import AdamW, Schedule, clip_grad_norm

from cli_util import assert_one_line_error, hotlora
from factory import EOT_ID, TinySpec, write_tiny_model

TEXT = ("The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.\n"
        "A hot lora adapter is trained in a few steps on the CPU.\n") * 3
FAST = TrainOptions(rank=4, alpha=8.0, ctx=32, steps=6, lr=1e-2, seed=3)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("base") / "base.gguf", TinySpec(seed=1))


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _arrays(params) -> list[np.ndarray]:
    return params.a + params.b


def _run(base: Path, text: Path, out: Path, options: TrainOptions = FAST, **kwargs):
    return finetune(base, text, Outputs(out, Path(f"{out}.ckpt"), **kwargs.pop("outputs", {})), options, 1,
                    **kwargs)


# ---- data --------------------------------------------------------------------------------------------------

def test_windows_cover_every_target_once_with_bos_first_and_keep_a_short_last_window():
    ids = [99, 1, 2, 3, 4, 5, 6, 7]   # 99: BOS
    mask = [True] * len(ids)
    cut = windows(ids, mask, 3, 99, 0)
    assert [w.tokens.tolist() for w in cut] == [[99, 1, 2], [99, 4, 5], [99]]
    assert [w.targets.tolist() for w in cut] == [[1, 2, 3], [4, 5, 6], [7]]
    no_bos = windows(ids, mask, 3, None, 0)
    assert [w.tokens.tolist() for w in no_bos] == [[99, 1, 2], [3, 4, 5], [6]]
    assert [w.targets.tolist() for w in no_bos] == [[1, 2, 3], [4, 5, 6], [7]]


def test_masked_positions_get_target_minus_one_and_windows_without_loss_are_dropped():
    ids, mask = [9, 1, 2, 3, 4, 5], [False, False, False, False, True, True]
    cut = windows(ids, mask, 2, 9, 0)
    assert [w.targets.tolist() for w in cut] == [[-1, 4], [5]]
    assert [w.tokens.tolist() for w in cut] == [[9, 3], [9]]


def test_text_windows_and_a_deterministic_validation_split(base, text):
    with Model(base, n_ctx=8, n_threads=1, repack=False) as m:
        ids = m.tokenize(TEXT)
        data = load_dataset(text, m, 32, val_split=0.25, seed=5)
        again = load_dataset(text, m, 32, val_split=0.25, seed=5)
        other = load_dataset(text, m, 32, val_split=0.25, seed=6)
    n = math.ceil((len(ids) - 1) / 32)
    assert len(data.train) + len(data.val) == n and len(data.val) == round(0.25 * n)
    in_order = sorted(data.train + data.val, key=lambda w: w.group)
    assert np.concatenate([w.targets for w in in_order]).tolist() == ids[1:]
    assert np.concatenate([w.tokens for w in in_order]).tolist() == ids[:-1]   # this vocabulary adds no BOS
    assert [w.group for w in again.val] == [w.group for w in data.val] != [w.group for w in other.val]


def test_with_a_bos_vocabulary_every_text_window_starts_with_bos(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    with Model(None, n_ctx=8, n_threads=1, repack=False) as m:   # the bundled model adds BOS
        ids = m.tokenize(TEXT)
        data = load_dataset(path, m, 16)
        assert ids[0] == m.tokenizer.bos_id
    assert all(w.tokens[0] == ids[0] for w in data.train)
    assert np.concatenate([w.targets for w in data.train]).tolist() == ids[1:]


def test_jsonl_prompt_completion_and_chat_records_train_only_on_the_answer(base, tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"prompt": "Q: the dog?", "completion": " A: the fox."}) + "\n\n" +
                    json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "the sun"}]}) + "\n")
    with Model(base, n_ctx=8, n_threads=1, repack=False) as m:
        data = load_dataset(path, m, 128, jsonl=True, chat_template="chatml")
        completion = m.tokenize(" A: the fox.", add_bos=False) + [EOT_ID]
        answer = m.tokenize("the sun<|im_end|>\n", add_bos=False)
    first, second = data.train
    assert first.targets[first.targets >= 0].tolist() == completion
    assert second.targets[second.targets >= 0].tolist() == answer
    assert m.detokenize(second.tokens.tolist()).startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


# ---- optimizer, schedule, clipping ------------------------------------------------------------------------------

def test_schedule_warms_up_linearly_then_decays_by_cosine():
    s = Schedule(lr=1.0, warmup=4, total=14)
    assert [s.lr_at(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr_at(4) == 1.0 and s.lr_at(9) == pytest.approx(0.5) and s.lr_at(13) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.9)))


def test_clipping_scales_to_the_global_norm_and_leaves_small_gradients_alone():
    grads = [np.array([3.0, 0.0], np.float32), np.array([[4.0]], np.float32)]
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    assert np.allclose(grads[0], [0.6, 0.0], rtol=1e-6) and np.allclose(grads[1], [[0.8]], rtol=1e-6)
    small = [np.array([0.3, 0.4], np.float32)]
    clip_grad_norm(small, 1.0)
    assert small[0].tolist() == np.array([0.3, 0.4], np.float32).tolist()


def test_adamw_matches_the_formula_in_float64():
    rng = np.random.default_rng(0)
    p = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(3)]
    opt = AdamW([p], weight_decay=0.1)
    ref, m, v = p.astype(np.float64), np.zeros(50), np.zeros(50)
    for t, g in enumerate(grads, 1):
        opt.step([g], lr=0.01)
        ref *= 1 - 0.01 * 0.1
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
        ref -= 0.01 / (1 - 0.9 ** t) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** t) + 1e-8)
    assert np.allclose(p, ref, rtol=1e-5, atol=1e-6)


# ---- training runs ------------------------------------------------------------------------------------------

def test_loss_decreases_and_the_adapter_loads_in_run(base, text, tmp_path, cli):
    out = tmp_path / "a.gguf"
    result, _ = _run(base, text, out, TrainOptions(rank=4, alpha=8.0, ctx=64, steps=30, lr=1e-2, seed=1))
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses
    with Model(base, n_ctx=64, n_threads=1, repack=False) as m:
        ids = m.tokenize("The quick brown")
        plain = m.eval(ids)
        m.reset()
        m.set_adapters({m.load_adapter(out): 1.0})
        assert not np.allclose(m.eval(ids), plain, atol=1e-3)
    proc = cli("run", "-m", base, "--hot-lora", out, "-p", "The quick", "-n", "4", "--temp", "0", "-t", "1")
    assert proc.returncode == 0, proc.stderr


def test_batch_and_accumulation_give_the_same_step(base, text, tmp_path):
    """batch 2 × grad-acc 1 and batch 1 × grad-acc 2 are the same step: mean over the loss tokens of both."""
    a, _ = _run(base, text, tmp_path / "a.gguf", TrainOptions(rank=4, ctx=32, steps=2, batch=2, seed=2))
    b, _ = _run(base, text, tmp_path / "b.gguf", TrainOptions(rank=4, ctx=32, steps=2, grad_acc=2, seed=2))
    for x, y in zip(_arrays(a.params), _arrays(b.params)):
        assert np.array_equal(x, y)


def test_resume_continues_bit_for_bit(base, text, tmp_path):
    whole, _ = _run(base, text, tmp_path / "whole.gguf")
    out = tmp_path / "part.gguf"
    with pytest.raises(KeyboardInterrupt):
        def stop_at_4(report):
            if report.step == 4:
                raise KeyboardInterrupt
        _run(base, text, out, on_step=stop_at_4)
    resumed, _ = _run(base, text, out, TrainOptions(rank=1), resume=Path(f"{out}.ckpt"))   # options: the checkpoint's
    assert resumed.losses == whole.losses
    for x, y in zip(_arrays(whole.params), _arrays(resumed.params)):
        assert np.array_equal(x, y)
    mine, theirs = GGUFFile(tmp_path / "whole.gguf"), GGUFFile(out)
    assert all(np.array_equal(info.data, theirs.tensors[name].data) for name, info in mine.tensors.items())


def test_ctrl_c_inside_a_step_writes_the_last_whole_step_and_exits_130(base, text, tmp_path, cli, monkeypatch):
    whole, _ = _run(base, text, tmp_path / "whole.gguf")
    calls = {"n": 0}
    real_step = Trainer.step

    def interrupted_step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt   # as Ctrl-C inside the third step's gradients
        return real_step(self)
    monkeypatch.setattr(Trainer, "step", interrupted_step)
    out = tmp_path / "cli.gguf"
    proc = cli("finetune", "-m", base, "--train-data", text, "-o", out, "--rank", 4, "--alpha", 8, "--ctx", 32,
               "--steps", 6, "--lr", 1e-2, "--seed", 3, "-t", 1)
    assert proc.returncode == 130 and "checkpoint written to" in proc.stderr and not out.exists()
    saved = ckpt.load(Path(f"{out}.ckpt"))
    assert saved.meta["step"] == 2
    monkeypatch.setattr(Trainer, "step", real_step)
    proc = cli("finetune", "-m", base, "--train-data", text, "-o", out, "--resume", f"{out}.ckpt", "-t", 1, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["losses"] == whole.losses


def test_checkpoint_every_n_steps(base, text, tmp_path):
    out = tmp_path / "a.gguf"
    _run(base, text, out, outputs={"checkpoint_every": 4})
    assert ckpt.load(Path(f"{out}.ckpt")).meta["step"] == 4


def test_peft_dir_converts_back_to_the_same_adapter(base, text, tmp_path):
    out, peft = tmp_path / "a.gguf", tmp_path / "peft"
    _run(base, text, out, TrainOptions(rank=4, ctx=32, steps=2, seed=4), outputs={"peft_dir": peft})
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4.0 and "q_proj" in config["target_modules"]
    back = convert_peft(peft, base, tmp_path / "back.gguf")
    assert back.alpha == 4.0
    mine, theirs = GGUFFile(out), GGUFFile(tmp_path / "back.gguf")
    assert list(mine.tensors) == list(theirs.tensors)
    for name, info in mine.tensors.items():
        assert np.array_equal(info.data, theirs.tensors[name].data), name


# ---- bad inputs ---------------------------------------------------------------------------------------------

def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", ["empty", "utf8", "ctx", "rank", "record", "json", "targets", "val"])
def test_bad_inputs_get_one_line_and_exit_1(case, base, text, tmp_path, cli):
    data, extra, needles = text, [], []
    if case == "empty":
        data, needles = _bad(tmp_path, "empty.txt", b" \n"), ["empty.txt", "empty"]
    elif case == "utf8":
        data, needles = _bad(tmp_path, "latin.txt", b"caf\xe9 au lait"), ["latin.txt", "byte offset 3", "UTF-8"]
    elif case == "ctx":
        extra, needles = ["--ctx", 100000], ["--ctx 100000", "context length 256"]
    elif case == "rank":
        extra, needles = ["--rank", 0], ["--rank"]
    elif case == "record":
        data = _bad(tmp_path, "r.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
        extra, needles = ["--jsonl"], ["r.jsonl:2", "completion"]
    elif case == "json":
        data, extra, needles = _bad(tmp_path, "j.jsonl", b'{"prompt": "a", \n'), ["--jsonl"], ["j.jsonl:1"]
    elif case == "targets":
        extra, needles = ["--targets", "q,lm_head"], ["--targets"]
    elif case == "val":
        extra, needles = ["--val-split", 1.5], ["--val-split"]
    proc = cli("finetune", "-m", base, "--train-data", data, "-o", tmp_path / "out.gguf", "--steps", 1, "-t", 1, *extra)
    assert_one_line_error(proc, 1, *needles)
    assert not (tmp_path / "out.gguf").exists()


def test_resume_from_another_base_is_refused(base, text, tmp_path):
    out = tmp_path / "a.gguf"
    _run(base, text, out, outputs={"checkpoint_every": 2})
    other = write_tiny_model(tmp_path / "other.gguf", TinySpec(seed=2))
    proc = hotlora("finetune", "-m", other, "--train-data", text, "-o", tmp_path / "b.gguf", "--resume",
                   f"{out}.ckpt", "-t", 1)
    assert_one_line_error(proc, 1, "--resume", "another base model")


# ---- the bundled demo ---------------------------------------------------------------------------------------

DATA = Path(__file__).parent.parent / "data"


def test_loss_decreases_on_the_demo_text(tmp_path):
    result, data = _run(None, DATA / "hot-lora.txt", tmp_path / "a.gguf",
                        TrainOptions(rank=8, ctx=128, steps=30, lr=1e-2, seed=0))
    assert len(data.train) == 1 and result.losses[-1] < 0.6 * result.losses[0], result.losses


def test_the_bundled_demo_adapter_writes_the_demo_text_and_the_base_does_not():
    """data/hotlora-tiny-hot-lora.lora.gguf (data/make_hot_lora.py: hotlora finetune on data/hot-lora.txt)."""
    text = (DATA / "hot-lora.txt").read_text(encoding="utf-8")
    with Model(None, n_ctx=256, n_threads=1, repack=False) as m:
        n = len(m.tokenize(text, add_bos=False))
        greedy = lambda: "".join(p for _, p in m.generate([m.tokenizer.bos_id], n_predict=n, temp=0))  # noqa: E731
        base = greedy()
        m.set_adapters({m.load_adapter(DATA / "hotlora-tiny-hot-lora.lora.gguf"): 1.0})
        assert greedy() == text
    for line in text.splitlines():
        assert line not in base


def test_keep_activations_trains_the_same_adapter(base, text, tmp_path):
    plain, _ = _run(base, text, tmp_path / "a.gguf")
    kept, _ = _run(base, text, tmp_path / "b.gguf", keep_activations=True)
    assert kept.losses == plain.losses
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(plain.params), _arrays(kept.params)))
