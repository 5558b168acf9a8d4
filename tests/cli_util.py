"""Running `hotlora` as a user does (a subprocess) and checking its one-line errors."""
from __future__ import annotations

import subprocess
import sys


def hotlora(*args, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hotlora", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def assert_one_line_error(proc, code: int, *needles: str, any_of: tuple[str, ...] = ()) -> None:
    """Exit code, no traceback, stderr exactly one `error: ...` line containing every needle."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if any_of:
        assert any(needle in lines[0] for needle in any_of), (any_of, lines[0])
