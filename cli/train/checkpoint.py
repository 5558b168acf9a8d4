"""Training checkpoints: everything a run needs to continue bit for bit, in one file written atomically.

The file is a numpy .npz (no pickles): the LoRA A and B arrays, AdamW's two moments of each, the data order of
the current epoch, and `meta`, a JSON object (as uint8 bytes) with the format version, the optimizer step, the
position in the data order, the data-order RNG's state, the training options, the losses so far, and the
identity of the base model and of the training data. A base is identified cheaply by its file size and the
sha256 of its header (metadata and tensor table) plus the first 4 KiB of every tensor's data, so two models
with the same shapes but other weights differ; the training data by its size and sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HotLoraError
from ..gguf_io import GGUFFile
from ..output_file import atomic_output

FORMAT = "hotlora-finetune-checkpoint"
VERSION = 1
SAMPLE_BYTES = 4096


def base_identity(file: GGUFFile) -> dict:
    """{"size", "sha256"} of a base model: header plus the first SAMPLE_BYTES of every tensor (module doc)."""
    digest = hashlib.sha256()
    with open(file.path, "rb") as fh:
        digest.update(fh.read(file.reader.data_offset))
    for info in file.tensors.values():
        digest.update(info.data[:SAMPLE_BYTES].tobytes())
    return {"size": os.path.getsize(file.path), "sha256": digest.hexdigest()}


def data_identity(path: Path) -> dict:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise HotLoraError(f"cannot read training data '{path}': {e.strerror or e}") from None
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


@dataclass
class Checkpoint:
    meta: dict                 # JSON-able: see the module doc
    a: list[np.ndarray]
    b: list[np.ndarray]
    m: list[np.ndarray]        # AdamW first moments, in the optimizer's parameter order (all A, then all B)
    v: list[np.ndarray]        # second moments
    order: np.ndarray          # int64: this epoch's order of the training windows


def save(path: Path, ckpt: Checkpoint) -> None:
    arrays = {"meta": np.frombuffer(json.dumps({"format": FORMAT, "version": VERSION, **ckpt.meta}).encode(),
                                    np.uint8), "order": ckpt.order}
    for key, values in (("a", ckpt.a), ("b", ckpt.b), ("m", ckpt.m), ("v", ckpt.v)):
        arrays.update({f"{key}{i}": x for i, x in enumerate(values)})
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load(path: Path) -> Checkpoint:
    """The checkpoint in `path`, or one line saying why it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise HotLoraError(f"--resume: '{path}' does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise HotLoraError(f"--resume: '{path}' is not a hotlora finetune checkpoint ({e})") from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise KeyError("format")
        n = len(meta["names"])

        def take(key: str, count: int) -> list[np.ndarray]:
            return [arrays[f"{key}{i}"] for i in range(count)]
        return Checkpoint(meta, take("a", n), take("b", n), take("m", 2 * n), take("v", 2 * n), arrays["order"])
    except (KeyError, TypeError, ValueError):
        raise HotLoraError(f"--resume: '{path}' is not a hotlora finetune checkpoint (version {VERSION})") from None


def check_same(path: Path, what: str, saved: dict, now: dict, now_path: Path) -> None:
    """Refuses to resume on another base model or other training data."""
    if saved != now:
        raise HotLoraError(f"--resume: '{path}' was written for another {what} than '{now_path}' "
                           f"(size {saved.get('size')} vs {now['size']}, sha256 {str(saved.get('sha256'))[:12]}… vs "
                           f"{now['sha256'][:12]}…)")
