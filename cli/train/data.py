"""Training data: a UTF-8 text file, or JSONL prompt/completion or chat records, as windows of tokens.

A *sequence* is a record's tokens with a loss mask (text: every token; a prompt/completion record: the
completion and the end-of-sequence token after it; a chat record: every assistant turn as the chat template
renders it, its end marker included). It starts with BOS when the vocabulary adds one, as every `hotlora run`
prompt does.

A sequence is cut into windows of at most `ctx` input tokens. Every token after the first is a target in
exactly one window; a window's inputs are the token before its first target and the targets but the last
(`inputs = tokens[:-1]`, `targets = tokens[1:]`). When the vocabulary adds BOS, each window after the first
starts with BOS instead of the token before, so every window looks like a run prompt. The last window may be
short; it is kept as it is (no padding, so no loss on padding). A window with no loss position is dropped.

`--val-split F` holds out round(F·n) groups (text: windows; JSONL: records, so one record never lands on both
sides), chosen by a permutation from `--seed`, at least one when F > 0, never all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..chat_template import TEMPLATE_KEY, ChatTemplate, load_chat_template
from ..errors import HotLoraError
from ..tokenizer import Tokenizer


@dataclass
class Window:
    tokens: np.ndarray    # int32 [T]: the inputs
    targets: np.ndarray   # int32 [T]: the next token at each position, -1 where there is no loss
    group: int            # the window (text) or record (JSONL) it came from: the unit of the validation split

    @property
    def n_loss(self) -> int:
        return int(np.count_nonzero(self.targets >= 0))


@dataclass
class Dataset:
    path: Path
    train: list[Window]
    val: list[Window]
    n_tokens: int         # tokens of all sequences, BOS included

    @property
    def train_loss_tokens(self) -> int:
        return sum(w.n_loss for w in self.train)


def read_utf8(path: Path) -> str:
    """The file's text; one line naming the file and the byte offset of the first invalid byte otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise HotLoraError(f"cannot read training data '{path}': {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HotLoraError(f"{path}: not UTF-8 text: invalid byte 0x{raw[e.start]:02x} at byte offset {e.start}") \
            from None


def windows(ids: list[int], mask: list[bool], ctx: int, bos: int | None, group: int) -> list[Window]:
    """A sequence (tokens, whether each is a loss target) as windows of at most ctx inputs (module doc)."""
    out = []
    for first in range(1, len(ids), ctx):
        targets = np.array(ids[first:first + ctx], np.int32)
        head = [bos] if bos is not None else [ids[first - 1]]
        tokens = np.array(head + ids[first:first + len(targets) - 1], np.int32)
        targets[~np.array(mask[first:first + ctx], bool)] = -1
        if np.any(targets >= 0):
            out.append(Window(tokens, targets, group))
    return out


def _bos(tokenizer: Tokenizer) -> int | None:
    return tokenizer.bos_id if tokenizer.add_bos else None


def text_sequences(tokenizer: Tokenizer, path: Path) -> list[tuple[list[int], list[bool]]]:
    text = read_utf8(path)
    if not text.strip():
        raise HotLoraError(f"{path}: the training text is empty")
    ids = tokenizer.tokenize(text, add_bos=True, special=True)
    return [(ids, [True] * len(ids))]


def _record(path: Path, number: int, line: str) -> dict:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise HotLoraError(f"{where}: not a JSON object ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise HotLoraError(f"{where}: not a JSON object")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise HotLoraError(f"{where}: \"messages\" must be a list of {{\"role\", \"content\"}} strings")
        if not any(m["role"] == "assistant" for m in messages):
            raise HotLoraError(f"{where}: \"messages\" has no assistant turn to train on")
        return record
    missing = [k for k in ("prompt", "completion") if not isinstance(record.get(k), str)]
    if missing:
        raise HotLoraError(f"{where}: the record has no {' or '.join(repr(k) for k in missing)} string "
                           f"(expected {{\"prompt\", \"completion\"}} or {{\"messages\": [...]}})")
    if not record["completion"]:
        raise HotLoraError(f"{where}: \"completion\" is empty: nothing to train on")
    return record


def _completion_sequence(tokenizer: Tokenizer, record: dict) -> tuple[list[int], list[bool]]:
    """prompt (BOS first) without loss, then the completion and EOS with loss."""
    prompt = tokenizer.tokenize(record["prompt"], add_bos=True, special=True)
    completion = tokenizer.tokenize(record["completion"], add_bos=False, special=True)
    if tokenizer.eos_id is not None:
        completion.append(tokenizer.eos_id)
    return prompt + completion, [False] * len(prompt) + [True] * len(completion)


def _chat_spans(template: ChatTemplate, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns: each span is what rendering
    that turn adds to the conversation before it (with the generation prompt)."""
    text = template.render(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        through = template.render(messages[:i + 1], add_generation_prompt=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise HotLoraError(f"{where}: the chat template {template.source} does not render the conversation as "
                               f"a sequence of turns, so the assistant turns cannot be found for the loss")
        spans.append((len(before), len(through)))
    return text, spans


def _chat_sequence(tokenizer: Tokenizer, template: ChatTemplate, record: dict,
                   where: str) -> tuple[list[int], list[bool]]:
    text, spans = _chat_spans(template, record["messages"], where)
    cuts = [0]
    for start, end in spans:
        cuts += [start, end]
    cuts.append(len(text))
    ids, mask = [], []
    for k in range(len(cuts) - 1):
        piece = text[cuts[k]:cuts[k + 1]]
        if k == 0:
            piece_ids = _rendered_start(template, tokenizer, piece)
        else:
            piece_ids = tokenizer.tokenize(piece, add_bos=False, special=True)
        ids += piece_ids
        mask += [k % 2 == 1] * len(piece_ids)
    return ids, mask


def _rendered_start(template: ChatTemplate, tokenizer: Tokenizer, text: str) -> list[int]:
    """The first piece of a rendered conversation with one BOS (the template's own, or the tokenizer's)."""
    bos = template.bos_token
    if tokenizer.add_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    return tokenizer.tokenize(text, add_bos=True, special=True)


def jsonl_sequences(tokenizer: Tokenizer, path: Path, template: ChatTemplate | None) \
        -> list[tuple[list[int], list[bool]]]:
    sequences = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        record = _record(path, number, line)
        if "messages" in record:
            if template is None:
                raise HotLoraError(f"{path}:{number}: a chat record needs a chat template: the model has no "
                                   f"'{TEMPLATE_KEY}'; give one with --chat-template")
            sequences.append(_chat_sequence(tokenizer, template, record, f"{path}:{number}"))
        else:
            sequences.append(_completion_sequence(tokenizer, record))
    if not sequences:
        raise HotLoraError(f"{path}: the JSONL file has no records")
    return sequences


def split(groups: list[int], fraction: float, seed: int) -> set[int]:
    """The groups held out for validation (module doc)."""
    if fraction <= 0:
        return set()
    held = max(1, round(fraction * len(groups)))
    if held >= len(groups):
        raise HotLoraError(f"--val-split {fraction:g} leaves no training data ({len(groups)} "
                           f"{'window' if len(groups) == 1 else 'windows or records'} in all)")
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(groups))
    return {groups[i] for i in order[:held]}


def load_dataset(path: Path, model, ctx: int, jsonl: bool = False, val_split: float = 0.0, seed: int = 0,
                 chat_template: str | None = None) -> Dataset:
    """Tokenizes the training data with the model's tokenizer and cuts it into train and validation windows."""
    path = Path(path)
    if ctx > model.hparams.n_ctx_train:
        raise HotLoraError(f"--ctx {ctx} is longer than the model's context length {model.hparams.n_ctx_train} "
                           f"({model.path})")
    tokenizer = model.tokenizer
    if jsonl:
        template = load_chat_template(chat_template, model.file.get_str(TEMPLATE_KEY), model.path, tokenizer)
        sequences = jsonl_sequences(tokenizer, path, template)
    else:
        sequences = text_sequences(tokenizer, path)
    all_windows = []
    for record, (ids, mask) in enumerate(sequences):
        all_windows += windows(ids, mask, ctx, _bos(tokenizer), record)
    if not jsonl:   # one text: each window is a unit of the validation split
        for i, w in enumerate(all_windows):
            w.group = i
    if not all_windows:
        raise HotLoraError(f"{path}: no token to train on (the text is a single token)")
    groups = sorted({w.group for w in all_windows})
    held = split(groups, val_split, seed)
    return Dataset(path, [w for w in all_windows if w.group not in held], [w for w in all_windows if w.group in held],
                   sum(len(ids) for ids, _ in sequences))
