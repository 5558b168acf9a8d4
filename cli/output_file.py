"""Writing an output file so that no file is ever destroyed: not an input, not a half-written output.

`refuse_same_file(output, inputs)` compares (st_dev, st_ino), so an output that is a hard link or a symlink
to an input is refused before anything is written (a reader mmaps its input; truncating the same inode
under it would crash with SIGBUS and lose the input).

`atomic_output(output)` yields a temporary path in the output's folder; the caller writes the whole file
there. When the block ends without an error the file is fsynced and renamed over the output (os.replace),
so the output is either the old file or the complete new one. On any failure, Ctrl-C included, the temporary
file is removed. An output that is a symlink is written through: its target is replaced, the link kept.
An existing output that is not a regular file (a folder, /dev/full, a FIFO) is refused: renaming onto it
would replace the device node or fail. Every OSError becomes one HotLoraError line naming the output.

`write_gguf(writer)` writes a GGUFWriter's file and checks that every byte reached it: numpy's `tofile`
(which GGUFWriter uses for tensor data) ignores a failed final flush, so a full disk or a file size limit
would otherwise leave a silently truncated file.
"""
from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import HotLoraError


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following symlinks; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_same_file(output: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """inputs: (what, path) pairs, e.g. ("base model", m.gguf). Raises when output is one of them."""
    out = _identity(output)
    if out is None:
        return
    for what, path in inputs:
        if _identity(path) == out:
            raise HotLoraError(f"the output '{output}' is the same file as the {what} '{path}'; "
                               f"give another output path")


def _check_target(output: Path, target: Path) -> os.stat_result | None:
    """The stat of an existing regular-file output, None when there is none yet; refuses anything else."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise HotLoraError(f"cannot write '{output}': folder '{target.parent}' does not exist") from None
        return None
    if stat.S_ISDIR(st.st_mode):
        raise HotLoraError(f"cannot write '{output}': it is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise HotLoraError(f"cannot write '{output}': not a regular file (outputs are written to a temporary "
                           f"file and renamed into place)")
    return st


def _create_temp(target: Path, mode: int | None) -> Path:
    """An empty new file beside target (O_EXCL: never an existing one), with target's mode if it exists."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    if mode is not None:
        os.chmod(tmp, mode)
    return tmp


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_gguf(writer) -> None:
    """Header, metadata and tensors of a gguf.GGUFWriter, then close; OSError if bytes were lost."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.flush()
    (fout,) = writer.fout
    expected, written = fout.tell(), os.fstat(fout.fileno()).st_size
    writer.close()
    if written != expected:
        raise OSError(f"only {written} of {expected} bytes reached the file (disk full or over a file size limit)")


@contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """with atomic_output(out) as tmp: write the whole file to tmp; it replaces out when the block succeeds."""
    output = Path(output)
    target = Path(os.path.realpath(output))
    tmp = None
    try:
        existing = _check_target(output, target)
        tmp = _create_temp(target, stat.S_IMODE(existing.st_mode) if existing else None)
        yield tmp
        _sync(tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise HotLoraError(f"cannot write '{output}': {e.strerror or e}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
