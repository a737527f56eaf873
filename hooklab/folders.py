"""Putting a finished output folder in place so that its name never points at nothing.

A merge or a saved checkpoint is written into a hidden sibling ``.NAME.PID.XXXX.partial`` and
moved to ``NAME`` only once it is complete. Replacing an existing ``NAME`` is the delicate part: ``os.rename`` cannot
move a folder onto a non-empty one, so the plain way (old aside, new in) has a moment with no
``NAME`` at all. On Linux, ``renameat2(RENAME_EXCHANGE)`` swaps the two folders in one atomic
step, and at every instant ``NAME`` is either the old complete folder or the new complete one.

Where the system cannot exchange (another OS, a file system without it), the old folder is
renamed to ``.NAME.PID.replaced`` and the new one to ``NAME``. A kill between those two renames
leaves ``NAME`` missing for a moment, but never lost: the next write to ``NAME``
(:func:`clean_leftovers`) renames the ``.replaced`` folder back, and removes every other
leftover of killed runs, each with a log message.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_CANNOT_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def partial_folder(out: Path) -> Path:
    """A new hidden sibling of ``out`` to write into, named with this process's id.

    Made by ``mkdtemp`` (a unique name), then given the permissions a plain ``mkdir`` would
    (mkdtemp's are private to the owner, and the folder becomes ``out``).
    """
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


def put_in_place(folder: Path, out: Path) -> None:
    """Move the complete ``folder`` to ``out``, replacing what is there (see the module's note)."""
    if not os.path.lexists(out):
        folder.rename(out)
        return
    if exchange(folder, out):  # out is the new folder now; folder's name holds the old one
        _remove(folder)
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.replaced")
    out.rename(old)
    try:
        folder.rename(out)
    except BaseException:
        old.rename(out)
        raise
    _remove(old)


def exchange(a: Path, b: Path) -> bool:
    """Swap paths ``a`` and ``b`` atomically; False where this system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc 2.28 and later, Linux only
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_EXCHANGE:
        log.debug("renameat2(RENAME_EXCHANGE) unavailable here (%s); replacing by two renames", os.strerror(code))
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def clean_leftovers(out: Path) -> None:
    """Restore or remove what killed runs left beside ``out``; folders of live processes stay."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.(?:[^.]+\.)?(partial|replaced)")
    stale = []
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            stale.append((match.group(2), path))
    for kind, path in sorted(stale, key=lambda item: item[0] != "replaced"):
        if kind == "replaced" and not os.path.lexists(out):
            path.rename(out)
            log.warning("restored %s from %s, left by a merge killed while replacing it", out, path.name)
        else:
            _remove(path)
            log.warning("removed %s, left by a merge into %s that was killed", path.name, out)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
