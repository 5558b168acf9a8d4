"""`hotlora run`: generate text like llama-cli; timings on stderr, or one JSON object with --json.

With no --model and no adapter option it runs the bundled model twice, without
and then with the first bundled adapter, so the adapter's effect shows at once.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import HotLoraError
from ..model import Model, default_adapter_paths
from ..prompt_cache import PromptCache
from ..session import Session, kept_tokens
from ..text import unescape
from ..timings import format_perf_report, timings_json
from .options import UINT32_MAX, HotLora, HotLoraScaled, NoRepack, Threads, adapter_list, int_option

Opt = typer.Option
IntOpt = int_option
DEMO_SEED = 42  # the no-argument demo samples both passes alike, so they differ only by the adapter
DEMO_ADAPTER = "hotlora-tiny-hot-lora.lora.gguf"  # trained on data/hot-lora.txt by data/make_hot_lora.py


def demo_adapter_paths() -> list[Path]:
    """The adapter of the no-argument demo: the one `hotlora finetune` trained on data/hot-lora.txt (else the
    first bundled one)."""
    paths = default_adapter_paths()
    return [p for p in paths if p.name == DEMO_ADAPTER] or paths[:1]

if TYPE_CHECKING:
    from .lora_repl import LoraCommands


@dataclass
class Generation:
    """What one pass generates from: the prompt, stop rules and how to show the result."""
    prompt_ids: list[int]
    n_predict: int
    reverse_prompts: list[str]
    sampling: dict
    interactive: bool
    display_prompt: bool
    as_json: bool
    escape: bool
    keep: int = 0                              # --keep
    context_shift: bool = True                 # off: --no-context-shift or -n -2
    prompt_cache: Optional[PromptCache] = None


def _read_prompt(prompt: str, file: Optional[Path], escape: bool) -> str:
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HotLoraError(f"failed to open file '{file}' ({e})") from None
        return text[:-1] if text.endswith("\n") else text  # llama-cli drops one trailing newline
    return unescape(prompt) if escape else prompt


def _warm_up(model: Model) -> None:
    """One throw-away decode, counted in the load time as llama.cpp does."""
    bos = model.tokenizer.bos_id
    model.eval_last([bos if bos is not None else 0])
    model.reset()


def _prompt_tokens(model: Model, text: str) -> list[int]:
    ids = model.tokenize(text, add_bos=True, special=True)
    if not ids:
        raise HotLoraError("input is empty")
    limit = model.n_ctx - 4
    if len(ids) > limit:
        raise HotLoraError(f"prompt is too long ({len(ids)} tokens, max {limit})")
    return ids


def _interactive_turns(session: Session, gen: Generation, commands: LoraCommands) -> None:
    """Reads a turn after the `> ` marker; EOF ends the run cleanly (unlike llama-cli, which loops forever).

    As llama-cli: input of at most one character hands control back without adding
    text, and the samplers are reset after each user turn (their counters are kept
    in the model's perf counters, so the report covers the session). Input starting
    with /lora is an adapter command.
    """
    from .lora_repl import read_user_input  # rich loads only for interactive runs
    while True:
        line = read_user_input()
        if line is None:
            return
        if line.startswith("/lora"):
            commands.run(line.strip())
            continue
        text = unescape(line) if gen.escape else line
        if len(text) > 1:
            session.model.perf.add_sampling(session.sampler.sample_ms, session.sampler.n_accept)
            session.sampler.reset()
            session.feed(session.model.tokenize(text, add_bos=False, special=False))
        session.generate(gen.n_predict, gen.reverse_prompts)


def _stream_to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _close_counters(m: Model, sampler, total_start: float) -> None:
    m.perf.total_ms = (time.perf_counter() - total_start) * 1e3
    m.perf.add_sampling(sampler.sample_ms, sampler.n_accept)


def _exit_interrupted(m: Model, sampler, total_start: float) -> None:
    """Ctrl+C: as llama-cli, a newline, the report so far, `Interrupted by user`, exit code 130."""
    sys.stdout.write("\n")
    _close_counters(m, sampler, total_start)
    sys.stderr.write(format_perf_report(m.perf))
    sys.stdout.write("Interrupted by user\n")
    raise typer.Exit(130)


def _start_counters(m: Model) -> None:
    """An empty cache and zeroed decode and sampling counters (the warm-up is part of the load time)."""
    m.reset()
    m.perf.prompt_ms = m.perf.eval_ms = m.perf.sample_ms = 0.0
    m.perf.prompt_n = m.perf.eval_n = m.perf.sample_n = 0


def _generate(m: Model, gen: Generation) -> None:
    """One pass from an empty cache: stream (or collect) the text, then the report (or JSON)."""
    _start_counters(m)
    sampler = m.sampler(**gen.sampling)
    n_keep = kept_tokens(gen.keep, len(gen.prompt_ids), m.tokenizer.add_bos) if gen.context_shift else None
    session = Session(m, sampler, (lambda text: None) if gen.as_json else _stream_to_stdout, n_keep)
    n_cached = gen.prompt_cache.restore(m, gen.prompt_ids) if gen.prompt_cache else 0
    total_start = time.perf_counter()
    if gen.interactive and not gen.as_json:
        from .lora_repl import banner
        sys.stderr.write(banner(gen.reverse_prompts))
    if not gen.as_json and gen.display_prompt:
        _stream_to_stdout(m.tokenizer.detokenize(gen.prompt_ids))
    try:
        session.feed(gen.prompt_ids, n_cached)
        if gen.prompt_cache:
            gen.prompt_cache.save(m, final=False)
        turn = session.generate(gen.n_predict, gen.reverse_prompts)
        if gen.prompt_cache and not session.n_shifts:  # as llama-cli: no saving once the context shifted
            gen.prompt_cache.save(m, final=True)
        if gen.interactive and not gen.as_json:
            from .lora_repl import LoraCommands  # rich loads only for interactive runs
            _interactive_turns(session, gen, LoraCommands(m))
    except KeyboardInterrupt:
        _exit_interrupted(m, sampler, total_start)
    _close_counters(m, sampler, total_start)
    if gen.as_json:
        _print_json(m, gen.prompt_ids, session, turn)
        return
    if turn.stop == "eog" and not gen.interactive:
        sys.stdout.write(" [end of text]\n")
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    sys.stderr.write(format_perf_report(m.perf))


def _print_json(m: Model, prompt_ids: list[int], session: Session, turn) -> None:
    generated = session.history[len(prompt_ids):]
    result = {
        "model": str(m.path),
        "adapters": [{"id": a.id, "path": str(a.path), "scale": s} for a, s in m.adapters.items()],
        "prompt_tokens": prompt_ids,
        "tokens": generated,
        "text": m.tokenizer.detokenize(generated),
        "stop": turn.stop,
        "timings": timings_json(m.perf),
    }
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


def run(
    model: Annotated[Optional[Path], Opt("-m", "--model", help="GGUF model (default: the bundled tiny model)")] = None,
    hot_lora: HotLora = None,
    hot_lora_scaled: HotLoraScaled = None,
    lora_keep_cache: Annotated[bool, Opt("--lora-keep-cache", help="reuse cache cells computed under another adapter set")] = False,
    prompt: Annotated[str, Opt("-p", "--prompt", help="prompt to start generation with")] = "",
    file: Annotated[Optional[Path], Opt("-f", "--file", help="a file containing the prompt")] = None,
    n_predict: Annotated[int, IntOpt("-n", "--n-predict", "--predict", help="tokens to predict (-1 = until an end-of-generation token, shifting the context; -2 = until the context is full)", low=-2)] = -1,
    ctx_size: Annotated[int, IntOpt("-c", "--ctx-size", help="context size (0 = from the model)", low=0)] = 4096,
    batch_size: Annotated[int, IntOpt("-b", "--batch-size", help="prompt tokens per decode", low=1)] = 512,
    threads: Threads = None,
    seed: Annotated[int, IntOpt("-s", "--seed", help="RNG seed (-1 = random)", low=-1, high=UINT32_MAX)] = -1,
    temp: Annotated[float, Opt("--temp", help="temperature (0 = greedy)")] = 0.8,
    top_k: Annotated[int, IntOpt("--top-k", help="top-k sampling (0 = off)")] = 40,
    top_p: Annotated[float, Opt("--top-p", help="top-p sampling (1.0 = off)")] = 0.95,
    min_p: Annotated[float, Opt("--min-p", help="min-p sampling (0.0 = off)")] = 0.05,
    repeat_penalty: Annotated[float, Opt("--repeat-penalty", help="penalty for repeated tokens (1.0 = off)")] = 1.0,
    repeat_last_n: Annotated[int, IntOpt("--repeat-last-n", help="tokens the penalty looks back on (-1 = context)", low=-1)] = 64,
    typical: Annotated[float, Opt("--typical", help="locally typical sampling p (1.0 = off)")] = 1.0,
    presence_penalty: Annotated[float, Opt("--presence-penalty", help="presence penalty (0.0 = off)")] = 0.0,
    frequency_penalty: Annotated[float, Opt("--frequency-penalty", help="frequency penalty (0.0 = off)")] = 0.0,
    xtc_probability: Annotated[float, Opt("--xtc-probability", help="XTC probability (0.0 = off)")] = 0.0,
    xtc_threshold: Annotated[float, Opt("--xtc-threshold", help="XTC threshold")] = 0.1,
    dynatemp_range: Annotated[float, Opt("--dynatemp-range", help="dynamic temperature range (0.0 = off)")] = 0.0,
    dynatemp_exp: Annotated[float, Opt("--dynatemp-exp", help="dynamic temperature exponent")] = 1.0,
    ignore_eos: Annotated[bool, Opt("--ignore-eos", help="never sample an end-of-generation token")] = False,
    no_display_prompt: Annotated[bool, Opt("--no-display-prompt", help="do not echo the prompt")] = False,
    interactive: Annotated[bool, Opt("-i", "--interactive", help="read more input after each turn (/lora commands too)")] = False,
    reverse_prompt: Annotated[Optional[list[str]], Opt("-r", "--reverse-prompt", help="stop (or hand back control) at this text; repeatable")] = None,
    cache_type: Annotated[str, Opt("--cache-type", "--cache-type-k", help="KV cache type: f16 or f32")] = "f16",
    no_escape: Annotated[bool, Opt("--no-escape", help="do not process escapes (\\n, \\t, ...) in the prompt")] = False,
    no_warmup: Annotated[bool, Opt("--no-warmup", help="skip the warm-up decode")] = False,
    no_repack: NoRepack = False,
    check_tensors: Annotated[bool, Opt("--check-tensors", help="scan every weight for NaN/inf values and scales first")] = False,
    as_json: Annotated[bool, Opt("--json", help="print one JSON object instead of streaming text")] = False,
    keep: Annotated[int, IntOpt("--keep", help="tokens kept on a context shift (-1 = the whole prompt); BOS is kept too", low=-1)] = 0,
    no_context_shift: Annotated[bool, Opt("--no-context-shift", help="stop when the context is full instead of shifting it")] = False,
    prompt_cache: Annotated[Optional[Path], Opt("--prompt-cache", help="file caching the prompt's state, reused for a prompt it starts")] = None,
    prompt_cache_all: Annotated[bool, Opt("--prompt-cache-all", help="also save the generated tokens to --prompt-cache")] = False,
    prompt_cache_ro: Annotated[bool, Opt("--prompt-cache-ro", help="use --prompt-cache without updating it")] = False,
    conversation: Annotated[Optional[bool], Opt("-cnv/-no-cnv", "--conversation/--no-conversation", help="chat with the model's template (default: on when it has one and no prompt is given)")] = None,
    system_prompt: Annotated[str, Opt("-sys", "--system-prompt", help="system message in conversation mode")] = "",
    chat_template: Annotated[Optional[str], Opt("--chat-template", help="chat template: chatml, llama2, llama3, zephyr, mistral-v7 or a Jinja file (default: the model's)")] = None,
) -> None:
    """Generate text from a prompt, like llama-cli, with LoRA adapters applied at run time."""
    if cache_type not in ("f16", "f32"):
        raise typer.BadParameter(f"'{cache_type}' is not f16 or f32", param_hint="--cache-type")
    if prompt_cache and prompt_cache_all and interactive:
        raise HotLoraError("--prompt-cache-all is not supported in interactive mode")
    adapters = adapter_list(hot_lora, hot_lora_scaled)
    compare = model is None and not adapters and not conversation  # the default job: base, then the first bundled adapter
    if compare:
        adapters = [(p, 1.0) for p in demo_adapter_paths()]
        if seed == -1:
            seed = DEMO_SEED
            sys.stderr.write(f"main: seed {seed} for both passes (-s N for another)\n")
    text = _read_prompt(prompt, file, not no_escape)
    start = time.perf_counter()
    with Model(model, n_ctx=ctx_size, n_threads=threads, cache_type=cache_type, n_batch=batch_size,
               lora_keep_cache=lora_keep_cache, repack=not no_repack) as m:
        if check_tensors:
            from ..check_tensors import check_run_files
            check_run_files(m.file, [path for path, _ in adapters], m.n_threads)
        loaded = {m.load_adapter(path): scale for path, scale in adapters}
        if not no_warmup:
            _warm_up(m)
        m.perf.load_ms = (time.perf_counter() - start) * 1e3
        gen = Generation(
            prompt_ids=_prompt_tokens(m, text), n_predict=n_predict,
            reverse_prompts=[r if no_escape else unescape(r) for r in reverse_prompt or []],
            sampling=dict(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical,
                          repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                          presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                          xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
                          dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exp,
                          ignore_eos=ignore_eos, seed=seed & 0xFFFFFFFF),
            interactive=interactive, display_prompt=not no_display_prompt, as_json=as_json, escape=not no_escape,
            keep=keep, context_shift=not no_context_shift and n_predict != -2,
            prompt_cache=PromptCache(prompt_cache, prompt_cache_all, prompt_cache_ro) if prompt_cache else None)
        if conversation or (conversation is None and not (prompt or file or compare or as_json)):
            from ..conversation import chat
            if chat(m, loaded, gen, conversation, chat_template, system_prompt, first_message=text):
                return
        if compare and loaded:
            sys.stderr.write("main: without adapters\n")
            _generate(m, gen)
            names = ", ".join(f"'{a.path.name}'" for a in loaded)
            sys.stderr.write(f"main: with adapter{'s' if len(loaded) > 1 else ''} {names}\n")
        m.set_adapters(loaded)
        _generate(m, gen)
