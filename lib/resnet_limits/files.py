"""Atomic file writes that give the new file the permissions of an ordinary one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# The process's umask, read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(temporary_path)``, then move the temporary file onto ``path``.

    Readers see either the old file or the complete new one. The new file gets mode 0666 minus
    the umask, as ``open`` would give it, in place of the 0600 of ``tempfile.mkstemp``, so a
    store shared in a group directory stays readable by the group.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
