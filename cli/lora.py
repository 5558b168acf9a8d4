"""hotlora.Adapter: a LoRA adapter loaded into the core for one model, ready to be made active."""
from __future__ import annotations

from pathlib import Path

from ._native import TYPE_IDS, check, ffi, lib
from .adapters import AdapterFile
from .errors import HotLoraError


class Adapter:
    """A loaded adapter. Activate it with Model.set_adapters({adapter: scale}).

    Attributes: id (load order within its model), path, name, alpha, ranks (base tensor
    name -> rank), targets (sorted base tensor names), n_bytes (its tensors' bytes), content_digest
    (AdapterFile.content_digest: adapters with equal digests compute the same thing, so KV cells made under
    one are valid under the other).
    """

    def __init__(self, adapter_id: int, file: AdapterFile, core_model):
        self.id = adapter_id
        self.path: Path = file.path
        self.name = file.name
        self.alpha = file.alpha
        self.ranks = {p.base: p.rank for p in file.pairs}
        self.targets = sorted(self.ranks)
        self.n_bytes = sum(p.a.data.nbytes + p.b.data.nbytes for p in file.pairs)
        self.content_digest = file.content_digest()
        self._file = file  # owns the memory the core's views point into
        self._handle = self._create(file, core_model)

    def _create(self, file: AdapterFile, core_model):
        pairs = ffi.new("hl_lora_pair[]", max(1, len(file.pairs)))
        buffers = []
        for cpair, pair in zip(pairs, file.pairs):
            cpair.target, cpair.layer, cpair.scale = pair.target, pair.layer, file.scale(pair)
            for view, matrix in ((cpair.a, pair.a), (cpair.b, pair.b)):
                buffers.append(ffi.from_buffer(matrix.data))
                view.data, view.type, view.ne = buffers[-1], TYPE_IDS[matrix.type_name], [*matrix.ne, 1, 1]
        content_key = int.from_bytes(self.content_digest[:8], "little") or 1
        desc = ffi.new("hl_adapter_desc *", {"n_pairs": len(file.pairs), "pairs": pairs, "content_key": content_key})
        out = ffi.new("hl_adapter **")
        check(lib.hl_adapter_create(core_model, desc, out), str(file.path))
        self._buffers = buffers
        return out[0]

    def free(self) -> None:
        """Releases the core's adapter; refused (HotLoraError) while a sequence still has it active."""
        if self._handle is not None:
            check(lib.hl_adapter_free(self._handle), str(self.path))
            self._handle = None

    @property
    def file(self) -> AdapterFile:
        """The adapter's tensors as read from its file."""
        return self._file

    @property
    def handle(self):
        if self._handle is None:
            raise HotLoraError(f"adapter {self.id} ({self.path}) has been unloaded")
        return self._handle

    def __repr__(self) -> str:
        return f"Adapter(id={self.id}, path='{self.path}', targets={len(self.targets)}, alpha={self.alpha})"
