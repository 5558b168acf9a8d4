"""Special and control tokens: detection by text, the end-of-generation set, strip attributes and splitting
input text around special tokens (tokenizers.md §6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gguf import TokenType

if TYPE_CHECKING:
    from .vocab import Vocab

CONTROL, UNKNOWN, USER_DEFINED = int(TokenType.CONTROL), int(TokenType.UNKNOWN), int(TokenType.USER_DEFINED)
SPECIAL_TYPES = frozenset((CONTROL, UNKNOWN, USER_DEFINED))
_ASCII_SPACE = " \t\n\v\f\r"  # C isspace()

# Texts that fill a missing special id (llama.cpp c392e5094, llama-vocab.cpp); the token is forced to CONTROL.
_BY_TEXT = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
            "<｜end▁of▁sentence｜>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<｜fim▁hole｜>", "<SUF>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<PAD>"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"),
    "fim_sep": ("<|file_sep|>", "<fim-sep>", "<SEP>"),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>")


def detect_by_text(ids: dict[str, int], types: list[int], special: dict[str, int | None]) -> None:
    """Fill missing eot/eom/fim ids from well-known token texts (lowest id if several exist), forcing the
    chosen token to CONTROL. Updates `types` and `special` in place."""
    for name, texts in _BY_TEXT.items():
        found = [ids[text] for text in texts if text in ids]
        if special[name] is None and found:
            special[name] = min(found)
            types[special[name]] = CONTROL


def eog_ids(ids: dict[str, int], types: list[int], special: dict[str, int | None]) -> frozenset[int]:
    """The end-of-generation set: eos, eot, eom, fim_pad/rep/sep and the tokens with an EOG text (forced to
    CONTROL, updating `types` in place)."""
    eog = {special[name] for name in ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")}
    for text in _EOG_TEXTS:
        if text in ids:
            eog.add(ids[text])
            types[ids[text]] = CONTROL
    eog.discard(None)
    return frozenset(eog)


def strip_ids(ids: dict[str, int], types: list[int], model_name: str, pre: str) -> tuple[frozenset[int], frozenset[int]]:
    """(LSTRIP ids, RSTRIP ids): llama.cpp sets them only by tokenizer / model name."""
    if any(name in pre for name in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
        return frozenset(ids[t] for t in ("<mask>",) if t in ids), frozenset()
    name = model_name.lower()
    if "phi-3" in name or "phi3" in name:
        rstrip = {i for i, t in enumerate(types) if t in SPECIAL_TYPES}
        rstrip |= {ids[t] for t in ("</s>",) if t in ids}
        rstrip -= {ids[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in ids}
        return frozenset(), frozenset(rstrip)
    return frozenset(), frozenset()


def special_cache(texts: list[str], types: list[int]) -> tuple[int, ...]:
    """CONTROL, USER_DEFINED and UNKNOWN tokens, longest text (in bytes) first, ties by id."""
    cached = [i for i, t in enumerate(types) if t in SPECIAL_TYPES]
    cached.sort(key=lambda i: -len(texts[i].encode("utf-8", "surrogateescape")))
    return tuple(cached)


def partition(text: str, vocab: Vocab, parse_special: bool) -> list[str | int]:
    """Split `text` into raw-text fragments (str) and special-token fragments (int). Without `parse_special`
    only USER_DEFINED tokens are matched."""
    fragments: list[str | int] = [text] if text else []
    for token in vocab.special_cache:
        if not parse_special and vocab.types[token] != USER_DEFINED:
            continue
        needle = vocab.texts[token]
        lstrip, rstrip = token in vocab.lstrip_ids, token in vocab.rstrip_ids
        split: list[str | int] = []
        for fragment in fragments:
            if isinstance(fragment, int) or needle not in fragment:
                split.append(fragment)
            else:
                split.extend(_cut(fragment, needle, token, lstrip, rstrip))
        fragments = split
    return fragments


def _cut(raw: str, needle: str, token: int, lstrip: bool, rstrip: bool) -> list[str | int]:
    """Cut every occurrence of `needle` out of `raw`, left to right, dropping empty remainders."""
    out: list[str | int] = []
    while raw:
        at = raw.find(needle)
        if at < 0:
            out.append(raw)
            break
        left = raw[:at].rstrip(_ASCII_SPACE) if lstrip else raw[:at]
        if left:
            out.append(left)
        out.append(token)
        raw = raw[at + len(needle):]
        if rstrip:
            raw = raw.lstrip(_ASCII_SPACE)
    return out
