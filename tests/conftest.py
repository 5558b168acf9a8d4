"""Fixtures shared by the test files."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from hotlora.app import main


@pytest.fixture
def cli(capsys):
    """`hotlora ARGS` in this process: exit code, stdout and stderr."""
    def invoke(*args):
        with pytest.raises(SystemExit) as done:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=done.value.code, stdout=out, stderr=err)
    return invoke
