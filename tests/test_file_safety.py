"""No file is ever destroyed by `quantize`, `export-lora` or `convert-lora` (hotlora.output_file).

Each writer writes a temporary file in the output's folder and renames it into place when complete; an output
that is the same file as an input (same path, hard link or symlink) is refused before anything is written.
Every case checks: exit code, one `error:` line naming the output, every input (and an existing output on a
failure) byte-identical afterwards, and no temporary file left in the folder.

Write failures are made deterministic: RLIMIT_FSIZE makes the subprocess's writes fail with EFBIG (Python
ignores SIGXFSZ) part way through the file; ENOSPC is injected in-process at the fsync before the rename;
Ctrl-C is a KeyboardInterrupt raised in-process in the middle of the tensor loop.
"""
from __future__ import annotations

import errno
import hashlib
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from cli_util import assert_one_line_error, hotlora
from factory import TinySpec, tiny_adapter_pairs, write_ggla_adapter, write_tiny_adapter, write_tiny_model
from hf_llama import HFConfig, make_peft_adapter, random_model, write_gguf

SPEC = TinySpec()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def world(tmp_path):
    """A tiny model, an adapter for it and a ggla adapter, in one folder."""
    model = write_tiny_model(tmp_path / "m.gguf", SPEC)
    adapter = write_tiny_adapter(tmp_path / "a.gguf", SPEC, ["attn_q", "ffn_up"], rank=4, alpha=8.0)
    ggla = write_ggla_adapter(tmp_path / "l.bin", tiny_adapter_pairs(SPEC, ["attn_q"]), 8, 4)
    return tmp_path, model, adapter, ggla


def commands(model: Path, adapter: Path, ggla: Path) -> dict[str, Callable[[Path], list]]:
    """command name -> (output -> argv), one per writer."""
    return {
        "quantize": lambda out: ["quantize", model, out, "Q4_0"],
        "export-lora": lambda out: ["export-lora", "-m", model, "--hot-lora", adapter, "-o", out],
        "convert-lora": lambda out: ["convert-lora", ggla, "--model", model, "-o", out],
    }


def check_refused(tmp_path, inputs, argv, code, *needles, any_of=(), env_limit=None):
    before = {p: digest(p) for p in inputs}
    if env_limit is None:
        proc = hotlora(*argv)
    else:
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (env_limit, env_limit))
        proc = subprocess.run([sys.executable, "-m", "hotlora", *map(str, argv)], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL, preexec_fn=limit)
    assert_one_line_error(proc, code, *needles, any_of=any_of)
    assert {p: digest(p) for p in inputs} == before
    assert temp_files(tmp_path) == []


# ---- an output that is an input (the reproducers, as a user runs them) ------------------------------

def link(kind: str, target: Path, path: Path) -> Path:
    if kind == "hard link":
        os.link(target, path)
    elif kind == "symlink":
        path.symlink_to(target.name)
    return path


@pytest.mark.parametrize("kind", ["hard link", "symlink"])
def test_quantize_refuses_its_input(world, kind):
    """Was: SIGBUS, the input truncated (the reader mmaps it, the writer truncated the same inode)."""
    tmp_path, model, adapter, ggla = world
    out = link(kind, model, tmp_path / "h.gguf")
    check_refused(tmp_path, [model], ["quantize", model, out, "Q4_0"], 1, f"'{out}'",
                  f"same file as the input '{model}'")


@pytest.mark.parametrize("kind, victim", [("hard link", "base model"), ("symlink", "adapter")])
def test_export_lora_refuses_its_inputs(world, kind, victim):
    """Was: the base truncated, then a traceback."""
    tmp_path, model, adapter, ggla = world
    target = model if victim == "base model" else adapter
    out = link(kind, target, tmp_path / "h.gguf")
    argv = ["export-lora", "-m", model, "--hot-lora", adapter, "-o", out]
    check_refused(tmp_path, [model, adapter], argv, 1, f"'{out}'", f"same file as the {victim} '{target}'")


@pytest.mark.parametrize("kind, victim", [("same path", "base model"), ("symlink", "ggla adapter")])
def test_convert_lora_refuses_its_inputs(world, kind, victim):
    """Was: `convert-lora ... --model b.gguf -o b.gguf` silently replaced the base."""
    tmp_path, model, adapter, ggla = world
    target = model if victim == "base model" else ggla
    out = target if kind == "same path" else link(kind, target, tmp_path / "g.gguf")
    argv = ["convert-lora", ggla, "--model", model, "-o", out]
    check_refused(tmp_path, [model, ggla], argv, 1, f"'{out}'", f"same file as the {victim} '{target}'")


def test_convert_lora_refuses_to_overwrite_peft_weights(tmp_path):
    cfg = HFConfig()
    base = write_gguf(tmp_path / "base.gguf", cfg, random_model(cfg))
    peft = make_peft_adapter(cfg, ["model.layers.0.self_attn.q_proj"], r=4, seed=1).save(tmp_path / "peft")
    weights, config = peft / "adapter_model.safetensors", peft / "adapter_config.json"
    out = link("hard link", weights, tmp_path / "w.gguf")
    check_refused(tmp_path, [base, weights, config], ["convert-lora", peft, "--model", base, "-o", out], 1,
                  f"'{out}'", f"same file as the PEFT weights '{weights}'")
    assert temp_files(peft) == []


# ---- a write that fails half way -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["quantize", "export-lora", "convert-lora"])
def test_a_write_failing_half_way_leaves_the_old_output(world, command):
    """Writes fail after 1000 bytes (RLIMIT_FSIZE: EFBIG, or a short write numpy does not report)."""
    tmp_path, model, adapter, ggla = world
    out = tmp_path / "out.gguf"
    out.write_bytes(b"the previous output")
    argv = commands(model, adapter, ggla)[command](out)
    check_refused(tmp_path, [model, adapter, ggla, out], argv, 1, f"cannot write '{out}'",
                  any_of=("File too large", "only 1000 of"), env_limit=1000)


# ---- in-process: ENOSPC at the fsync, Ctrl-C mid-write ------------------------------------------------------

def run_in_process(argv, capsys) -> tuple[int, str]:
    from hotlora.app import main
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("command", ["quantize", "export-lora", "convert-lora"])
def test_unwritable_outputs_are_one_line_errors(world, command, capsys):
    tmp_path, model, adapter, ggla = world
    argv = commands(model, adapter, ggla)[command]
    before = {p: digest(p) for p in (model, adapter, ggla)}
    missing = Path(os.path.realpath(tmp_path)) / "no"
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [(missing / "x.gguf", f"folder '{missing}' does not exist"), (folder, "it is a folder")]
    if Path("/dev/full").exists():   # a device is refused: never renamed over, never written
        cases.append((Path("/dev/full"), "not a regular file"))
    for out, reason in cases:
        code, err = run_in_process(argv(out), capsys)
        assert code == 1 and "\n" not in err and err.startswith(f"error: cannot write '{out}': {reason}"), err
    assert {p: digest(p) for p in (model, adapter, ggla)} == before
    assert not missing.exists() and list(folder.iterdir()) == [] and temp_files(tmp_path) == []


@pytest.mark.parametrize("command", ["quantize", "export-lora", "convert-lora"])
def test_disk_full_at_fsync_is_one_line(world, command, capsys, monkeypatch):
    tmp_path, model, adapter, ggla = world
    out = tmp_path / "out.gguf"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    code, err = run_in_process(commands(model, adapter, ggla)[command](out), capsys)
    assert (code, err) == (1, f"error: cannot write '{out}': No space left on device")
    assert not out.exists() and temp_files(tmp_path) == []


INTERRUPT_AT = {  # command -> (module, function) called while the temporary file exists
    "quantize": ("hotlora.commands.quantize", "requantize"),
    "export-lora": ("hotlora.merge", "merged_data"),
    "convert-lora": ("hotlora.convert", "write_gguf"),
}


@pytest.mark.parametrize("command", ["quantize", "export-lora", "convert-lora"])
def test_ctrl_c_mid_write_removes_the_temporary_file(world, command, capsys, monkeypatch):
    tmp_path, model, adapter, ggla = world
    out = tmp_path / "out.gguf"
    out.write_bytes(b"the previous output")
    seen = []

    def interrupt(*args, **kwargs):
        seen.extend(temp_files(tmp_path))
        raise KeyboardInterrupt
    module, name = INTERRUPT_AT[command]
    monkeypatch.setattr(f"{module}.{name}", interrupt)
    code, _ = run_in_process(commands(model, adapter, ggla)[command](out), capsys)
    assert code == 130
    assert len(seen) == 1 and seen[0].startswith(".out.gguf.")   # it was written beside the output
    assert out.read_bytes() == b"the previous output" and temp_files(tmp_path) == []


# ---- successful writes --------------------------------------------------------------------------------------

def test_replacing_an_output_keeps_its_mode_and_writes_through_a_symlink(world, capsys):
    tmp_path, model, adapter, ggla = world
    real = tmp_path / "real.gguf"
    real.write_bytes(b"old")
    real.chmod(0o640)
    out = link("symlink", real, tmp_path / "link.gguf")
    assert run_in_process(["quantize", model, out, "Q8_0"], capsys)[0] == 0
    assert out.is_symlink() and real.read_bytes()[:4] == b"GGUF"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert temp_files(tmp_path) == []
