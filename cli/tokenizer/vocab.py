"""The vocabulary stored in a GGUF file: tokens, scores, types, merges, special ids and flags (tokenizers.md §1).

`load_vocab` validates the `tokenizer.ggml.*` keys and applies llama.cpp's defaults; everything about special
tokens (text-based detection, the end-of-generation set, the parsing cache) lives in `special.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gguf import GGUFValueType, TokenType

from hotlora.errors import TokenizerError

from . import special
from .gguf_meta import Field
from .pretokenize import PRE_TOKENIZERS, PreTokenizer

log = logging.getLogger("hotlora.tokenizer")

KEY = "tokenizer.ggml."
SUPPORTED_MODELS = ("llama", "gpt2")
OUT_OF_SCOPE_MODELS = ("bert", "t5", "rwkv", "none", "no_vocab")
_INTEGER_KINDS = (GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                  GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64)
_KNOWN_TYPES = {int(t) for t in TokenType}  # 1..6; anything else reads as UNDEFINED (0)


@dataclass
class Vocab:
    """A loaded vocabulary. `types` holds TokenType values after §6's forcing to CONTROL; `special` maps
    "bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask", "fim_pre" … "fim_sep" to an id or None."""

    path: str
    model: str
    pre: str
    pre_tokenizer: PreTokenizer
    texts: list[str]
    ids: dict[str, int]
    scores: list[float]
    types: list[int]
    ranks: dict[tuple[str, str], int]
    special: dict[str, int | None]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool
    eog_ids: frozenset[int]
    lstrip_ids: frozenset[int]
    rstrip_ids: frozenset[int]
    special_cache: tuple[int, ...]

    @property
    def n_vocab(self) -> int:
        return len(self.texts)


def load_vocab(fields: dict[str, Field], path: str) -> Vocab:
    """Build the vocabulary from a GGUF file's metadata; raise TokenizerError naming `path` if it is unusable."""
    model = _model(fields, path)
    texts = _texts(fields, path)
    n = len(texts)
    pre, pre_tokenizer = _pre(fields, path, model)
    types = _types(fields, path, n)
    ids = {text: i for i, text in enumerate(texts)}
    special_ids = _special_ids(fields, path, model, pre_tokenizer, n)
    special.detect_by_text(ids, types, special_ids)
    eog = special.eog_ids(ids, types, special_ids)
    lstrip, rstrip = special.strip_ids(ids, types, _string(fields, path, "general.name") or "", pre)
    flags = _flags(fields, path, model, pre_tokenizer)
    return Vocab(
        path=path, model=model, pre=pre, pre_tokenizer=pre_tokenizer, texts=texts, ids=ids,
        scores=_scores(fields, path, n), types=types, ranks=_ranks(fields, path) if model == "gpt2" else {},
        special=special_ids, eog_ids=eog, lstrip_ids=lstrip, rstrip_ids=rstrip,
        special_cache=special.special_cache(texts, types), **flags,
    )


def _model(fields: dict[str, Field], path: str) -> str:
    model = _string(fields, path, KEY + "model")
    if model is None:
        raise TokenizerError(f"{path}: key not found in model: {KEY}model")
    if model in OUT_OF_SCOPE_MODELS:
        raise TokenizerError(f"{path}: tokenizer '{model}' is not supported (only 'llama' and 'gpt2')")
    if model not in SUPPORTED_MODELS:
        raise TokenizerError(f"{path}: unknown tokenizer: '{model}'")
    return model


def _texts(fields: dict[str, Field], path: str) -> list[str]:
    """§1: token texts; an empty text becomes `[EMPTY_<id>]`."""
    texts = _array(fields, path, KEY + "tokens", GGUFValueType.STRING)
    if texts is None:
        raise TokenizerError(f"{path}: cannot find tokenizer vocab in model file")
    if len(texts) == 0:
        raise TokenizerError(f"{path}: {KEY}tokens is empty")
    if "" in texts:
        texts = [text or f"[EMPTY_{i}]" for i, text in enumerate(texts)]
    return texts


def _pre(fields: dict[str, Field], path: str, model: str) -> tuple[str, PreTokenizer]:
    """§4.2: the pre-tokenizer of a BPE vocab; SPM vocabs ignore the key and use `default`."""
    name = _string(fields, path, KEY + "pre") if model == "gpt2" else "default"
    if not name:
        log.warning("%s: missing pre-tokenizer type, using: 'default'; GENERATION QUALITY WILL BE DEGRADED! "
                    "CONSIDER REGENERATING THE MODEL", path)
        name = "default"
    if name not in PRE_TOKENIZERS:
        raise TokenizerError(f"{path}: unknown pre-tokenizer type: '{name}'")
    return name, PRE_TOKENIZERS[name]


def _types(fields: dict[str, Field], path: str, n: int) -> list[int]:
    values = _array(fields, path, KEY + "token_type", GGUFValueType.INT32, n)
    if values is None:
        return [int(TokenType.NORMAL)] * n
    return [t if t in _KNOWN_TYPES else 0 for t in values.tolist()]


def _scores(fields: dict[str, Field], path: str, n: int) -> list[float]:
    values = _array(fields, path, KEY + "scores", GGUFValueType.FLOAT32, n)
    return [0.0] * n if values is None else values.tolist()


def _ranks(fields: dict[str, Field], path: str) -> dict[tuple[str, str], int]:
    """§1: merges `"<left> <right>"`, split at the first space at index ≥ 1; rank = index (first one wins)."""
    merges = _array(fields, path, KEY + "merges", GGUFValueType.STRING)
    if merges is None:
        raise TokenizerError(f"{path}: cannot find tokenizer merges in model file")
    ranks: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(merges):
        cut = merge.find(" ", 1)
        if cut > 0:
            ranks.setdefault((merge[:cut], merge[cut + 1:]), rank)
    return ranks


_SPECIAL_KEYS = {
    "bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
    "unk": "unknown_token_id", "sep": "seperator_token_id", "pad": "padding_token_id", "mask": "mask_token_id",
    "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id", "fim_mid": "fim_mid_token_id",
    "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id", "fim_sep": "fim_sep_token_id",
}
_DEPRECATED_FIM_KEYS = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}


def _special_ids(fields: dict[str, Field], path: str, model: str, pre: PreTokenizer, n: int) -> dict[str, int | None]:
    """§1: per-model defaults, then the `*_token_id` keys; an id ≥ n_vocab is ignored with a warning."""
    ids: dict[str, int | None] = dict.fromkeys(_SPECIAL_KEYS)
    ids.update({"bos": 1, "eos": 2, "unk": 0} if model == "llama" else {"bos": 11, "eos": 11})
    if not pre.has_bos:
        ids["bos"] = None
    keys = [(name, KEY + key) for name, key in _SPECIAL_KEYS.items()]
    keys += [(name, KEY + key) for name, key in _DEPRECATED_FIM_KEYS.items()]
    for name, key in keys:
        value = _scalar(fields, path, key, _INTEGER_KINDS, "uint32")
        if value is None:
            continue
        if 0 <= value < n:
            ids[name] = value
        else:
            log.warning("%s: bad special token: '%s' = %d, using default id %s", path, key, value, ids[name])
    # a default that does not exist in a small vocab would crash llama.cpp; here it is simply absent
    return {name: (i if i is not None and i < n else None) for name, i in ids.items()}


def _flags(fields: dict[str, Field], path: str, model: str, pre: PreTokenizer) -> dict[str, bool]:
    """§1 defaults per model (BPE ones from the pre-tokenizer, §4.2), then the override keys."""
    spm = model == "llama"
    flags = {
        "add_bos": True if spm else pre.add_bos,
        "add_eos": False,
        "add_space_prefix": spm,
        "clean_spaces": False if spm else pre.clean_spaces,
    }
    for flag, key in (("add_bos", "add_bos_token"), ("add_eos", "add_eos_token"),
                      ("add_space_prefix", "add_space_prefix")):
        value = _scalar(fields, path, KEY + key, (GGUFValueType.BOOL,), "bool")
        if value is not None:
            flags[flag] = bool(value)
    return flags


def _string(fields: dict[str, Field], path: str, key: str) -> str | None:
    return _scalar(fields, path, key, (GGUFValueType.STRING,), "string")


def _scalar(fields: dict[str, Field], path: str, key: str, kinds: tuple, expected: str):
    """The value of an optional scalar key, None if absent; wrong type → TokenizerError."""
    field = fields.get(key)
    if field is None:
        return None
    if field.kind not in kinds:
        raise TokenizerError(f"{path}: key {key} has wrong type {field.type_name()} but expected type {expected}")
    return field.value


def _array(fields: dict[str, Field], path: str, key: str, item: GGUFValueType, length: int | None = None):
    """The value of an optional array key, None if absent; wrong type or length → TokenizerError."""
    field = fields.get(key)
    if field is None:
        return None
    if field.kind != GGUFValueType.ARRAY or field.item not in (item, None):
        raise TokenizerError(f"{path}: key {key} has wrong type {field.type_name()} "
                             f"but expected type array[{item.name.lower()}]")
    if length is not None and len(field.value) != length:
        raise TokenizerError(f"{path}: {key} has {len(field.value)} entries but {KEY}tokens has {length}")
    return field.value
