"""The one place that decides whether a command may write to an output path (``--out``).

Every command that writes (``edit``, ``edit --revert``, ``embed``, ``eval --out``, ``run``,
``report``) asks :func:`output_file` or :func:`output_dir` first, before any expensive work, and
wraps its writes in :func:`writing`. The rule, the same for all of them:

1. **Only regular files and folders are ever replaced.** A symlink, device node, FIFO or socket at
   the output path (or a symlink standing for the output folder) is refused, with or without
   ``--overwrite``: relsafe never replaces ``/dev/full`` with a file or writes through a link.
2. **The right kind.** A folder where a file is expected, or a file where a folder is expected, is
   refused (never deleted to make room).
3. **Nothing relsafe did not write is replaced without ``--overwrite``.** An existing output is
   replaced when the command is given ``--overwrite`` (``edit``, ``embed``), or when it is
   recognisably the same command's own earlier output (``recognise``: a rows file whose first line
   is provenance, a run folder with its marker). Anything else is an error that says so.
4. **OS errors name the path.** ``PermissionError``, ``IsADirectoryError``, a full disk and other
   ``OSError`` s while writing become one :class:`~relsafe.errors.InputError` naming the path.
5. **One writer at a time.** ``edit``, ``edit --revert``, ``eval --out``, ``run`` and ``tune`` hold
   :func:`exclusive` on their output for the whole command: an advisory lock (``filelock``) in a
   file beside it, ``.<name>.relsafe-lock`` (and who holds it in ``.<name>.relsafe-lock.holder``). A
   second command writing the same output meanwhile gets an error naming the holder (its process
   id and command) instead of racing it.

Writes themselves stay atomic (``relsafe.utils_io``): a crash leaves the old output or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from relsafe.errors import InputError, RelsafeError

__all__ = [
    "RUN_MARKER",
    "exclusive",
    "is_run_folder",
    "output_dir",
    "output_file",
    "writing",
]

RUN_MARKER = ".relsafe-run.json"
"""The file ``relsafe run`` writes first into its output folder: what makes a folder a run folder."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _lstat(path: Path, what: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError as e:
        raise InputError(f"{what} {path}: a parent of it is not a folder") from e
    except OSError as e:
        raise InputError(f"{what} {path}: cannot inspect it ({e.strerror or e})") from e


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a folder we can write into."""
    parent = path.parent
    while True:
        st = _lstat(parent, what)
        if st is not None:
            break
        if parent == parent.parent:
            return
        parent = parent.parent
    if not stat.S_ISDIR(os.stat(parent).st_mode):
        raise InputError(f"{what} {path}: {parent} is {_kind(st.st_mode)}, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: no permission to write in {parent}")


def output_file(
    path: str | os.PathLike[str],
    *,
    what: str = "--out",
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> Path:
    """Check that a command may write the file ``path`` (see the module rule); returns it.

    ``recognise(path)`` says whether an existing regular file is this command's own earlier
    output, which is replaced without ``overwrite``."""
    path = Path(path)
    st = _lstat(path, what)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{what} {path} is a folder; give a file path")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(
                f"{what} {path} is {_kind(st.st_mode)}; relsafe only replaces regular files"
            )
        if not overwrite and not (recognise is not None and _safe(recognise, path)):
            hint = (
                "pass --overwrite to replace it"
                if recognise is None
                else ("it is not an output of this command; remove it or choose another path")
            )
            raise InputError(f"{what} {path} exists; {hint}")
        if not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
            raise InputError(f"{what} {path}: no permission to replace it")
    _check_parent(path, what)
    return path


def output_dir(
    path: str | os.PathLike[str],
    *,
    what: str = "--out",
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> Path:
    """Check that a command may write (or replace) the folder ``path``; returns it.

    An existing empty folder is always fine; a non-empty one needs ``overwrite`` or
    ``recognise(path)`` (the same command's own output, e.g. a run folder to resume)."""
    path = Path(path)
    st = _lstat(path, what)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            expected = "a folder" if stat.S_ISREG(st.st_mode) else "a real folder"
            raise InputError(f"{what} {path} is {_kind(st.st_mode)}, not {expected}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{what} {path}: no permission to write in it")
        empty = not any(os.scandir(path))
        if not empty and not overwrite and not (recognise is not None and _safe(recognise, path)):
            hint = (
                "pass --overwrite to replace it"
                if recognise is None
                else (
                    "it is not an output folder of this command; remove it or choose another path"
                )
            )
            raise InputError(f"{what} {path} exists and is not empty; {hint}")
    _check_parent(path, what)
    return path


def _safe(recognise: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(recognise(path))
    except (OSError, ValueError, RelsafeError):
        return False


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder ``relsafe run`` wrote: it holds the run marker, or (runs from
    before the marker) a ``config.yaml`` beside ``rows/`` or ``models/``."""
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    if (p / RUN_MARKER).is_file():
        return True
    return (p / "config.yaml").is_file() and ((p / "rows").is_dir() or (p / "models").is_dir())


def _within(child: Path, parent: Path) -> bool:
    """``child`` is ``parent``, inside it, or one of the temporaries an atomic write of
    ``parent`` makes beside it (``.<name>.*``)."""
    c, p = os.path.abspath(child), os.path.abspath(parent)
    if c == p or c.startswith(p.rstrip(os.sep) + os.sep):
        return True
    return os.path.dirname(c) == os.path.dirname(p) and os.path.basename(c).startswith(
        f".{os.path.basename(p)}."
    )


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], what: str = "--out") -> Iterator[Path]:
    """Turn OS errors raised while writing ``path`` (a file, or a folder and what is in it) into
    one :class:`InputError` naming it. An error about a file elsewhere (an input being read)
    passes through unchanged: it is not this output's to explain."""
    path = Path(path)
    try:
        yield path
    except RelsafeError:
        raise
    except OSError as e:
        if e.filename is not None and not _within(Path(os.fsdecode(e.filename)), path):
            raise
        where = e.filename or path
        reason = {
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
            errno.EISDIR: "is a folder",
            errno.ENOTDIR: "a parent is not a folder",
            errno.ENOSPC: "no space left on the device",
            errno.EROFS: "read-only file system",
            errno.EDQUOT: "disk quota exceeded",
        }.get(e.errno, e.strerror or str(e))
        raise InputError(f"cannot write {what} {path}: {reason} ({where})") from e
    except Exception as e:
        # safetensors' writers raise their own error class for an OS error while serialising
        # ("IoError(Os { code: 28, kind: StorageFull, ... })"); read errors of inputs pass through
        text = str(e)
        if type(e).__name__ != "SafetensorError" or "IoError" not in text:
            raise
        code = re.search(r"code: (\d+)", text)
        reason = {
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied",
            errno.EROFS: "read-only file system",
        }.get(int(code.group(1)) if code else -1, text)
        raise InputError(f"cannot write {what} {path}: {reason}") from e


def _lock_path(path: Path) -> Path:
    """The lock file of output ``path``: beside it, so it is never part of the output."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.relsafe-lock"


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], what: str = "--out") -> Iterator[Path]:
    """Hold the advisory lock of output ``path`` (rule 5 of the module docs) while the block
    runs; a second holder gets an :class:`InputError` naming the first (process id, command).
    The lock is released when the block ends, also on an error or Ctrl-C, and by the OS when the
    process dies."""
    import json
    import sys

    from filelock import FileLock, Timeout

    path = Path(path)
    lock_file = _lock_path(path)
    holder = lock_file.with_name(lock_file.name + ".holder")
    try:
        lock = FileLock(str(lock_file), timeout=0)
        lock.acquire()
    except Timeout:
        who = ""
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(holder.read_text(encoding="utf-8"))
            who = f" (process {info.get('pid')}: {info.get('command')})"
        raise InputError(
            f"{what} {path} is being written by another relsafe command{who}; wait for it to "
            "finish or choose another output"
        ) from None
    except OSError as e:
        raise InputError(f"{what} {path}: cannot create its lock file {lock_file} ({e})") from e
    try:
        with contextlib.suppress(OSError):  # (who holds it: for the message above only)
            command = " ".join(["relsafe", *sys.argv[1:]])[:300]
            holder.write_text(json.dumps({"pid": os.getpid(), "command": command}))
        yield path
    finally:
        lock.release()
