"""Private files: secrets on disk are 0600 in 0700 folders, whatever the process's umask.

:func:`private_dir` makes (or tightens) a folder the caller owns, :func:`private_file` creates or
tightens a file before anything secret is written to it, :func:`write_private` writes a whole file
(a cfg with live tokens) atomically as 0600. The modes are set explicitly (``chmod`` after
creating), so a permissive umask such as 000 does not widen them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from oarlock.keys.sealing import warn_once

FILE_MODE = 0o600
DIR_MODE = 0o700
#: folders of this name (and the folders inside them) belong to oarlock and are tightened
OWN_FOLDER = ".oarlock"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_dir(folder: Path, *, own: bool = False) -> None:
    """Create the missing folders down to ``folder`` 0700; tighten an existing one that is ours.

    An existing folder is ours when ``own`` is set or it lies in a ``.oarlock`` folder (then every
    folder from that ``.oarlock`` down is made 0700); an existing folder open to other users that
    is not ours is left as it is and warned about once per process.
    """
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:  # another process made it at the same moment
            continue
        os.chmod(path, DIR_MODE)
    existing = [folder] if not missing else []
    if OWN_FOLDER in folder.parts:
        top = len(folder.parts) - 1 - folder.parts[::-1].index(OWN_FOLDER)
        existing = [Path(*folder.parts[: index + 1]) for index in range(top, len(folder.parts))]
        own = True
    for path in existing:
        if path in missing or not path.is_dir() or not _mode(path) & 0o077:
            continue
        if own:
            _chmod(path, DIR_MODE)
        else:
            warn_once(
                f"dir:{path.resolve()}",
                f"keys store folder {path} is open to other users (mode {_mode(path):04o}); the store's files "
                f"are {FILE_MODE:04o}, but better keep them in a {DIR_MODE:04o} folder",
            )


def _chmod(path: Path, mode: int) -> bool:
    """chmod; False (after a warning) when the file belongs to another user."""
    try:
        os.chmod(path, mode)
    except PermissionError:
        warn_once(f"chmod:{path.resolve()}", f"{path} belongs to another user: cannot make it {mode:04o}")
        return False
    return True


def tighten_fd(fd: int, path: Path) -> None:
    """Make an open file 0600 unless it already is (a warning when it belongs to another user)."""
    if stat.S_IMODE(os.fstat(fd).st_mode) == FILE_MODE:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    except PermissionError:
        warn_once(f"chmod:{path.resolve()}", f"{path} belongs to another user: cannot make it {FILE_MODE:04o}")


def private_file(path: Path) -> None:
    """Create ``path`` 0600 if it is missing, or make an existing one 0600; its content is left."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        tighten_fd(fd, path)
    finally:
        os.close(fd)


def tighten_if_present(path: Path) -> None:
    """Make ``path`` 0600 if it exists (a -wal or -shm file left by an earlier run)."""
    try:
        if _mode(path) != FILE_MODE:
            _chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass


def write_private(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, atomically (a temporary file beside it, then a rename).

    An existing file at ``path`` is replaced, so it ends 0600 even if it was 0644; the folder must
    exist (it is not created or changed). Raises OSError like ``Path.write_text``.
    """
    target = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
