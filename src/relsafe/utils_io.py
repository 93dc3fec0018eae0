"""Small I/O helpers every module uses: atomic writes and streamed file hashes.

An atomic write goes to a temporary file in the destination's folder, is flushed and fsynced, and
then ``os.replace``-d onto the destination, so readers see either the old file or the complete new
one, never a half-written file, even if the process dies mid-write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "recover_atomic_dir",
    "compose_yaml",
    "load_yaml_text",
    "read_json_file",
    "read_text_file",
    "sha256_file",
]

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on clean exit move it onto ``path`` atomically.

    For writers that want a file name rather than bytes (``safetensors.torch.save_file``, ...).
    On an exception the temporary file is removed and ``path`` is left untouched. Parent folders
    are created.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write to {dest}: the writer produced no file at {tmp}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON (NaN/inf rejected) and write it atomically; returns the path.

    The object is serialised *before* the file is touched, so an unserialisable object raises
    without leaving anything behind.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """Hex SHA-256 of a file's bytes, streamed in ``chunk_size`` blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def stat_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """``(resolved path, mtime in ns, size)``: what :func:`sha256_file_cached` keys on."""
    p = Path(path)
    st = p.stat()
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)


def sha256_file_cached(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, remembered per ``(path, mtime, size)`` for this process: provenance
    hashes the same checkpoints (e.g. relsafe-mini's 90 MB text encoder) at every stage of a run,
    and a changed file has a new mtime or size, so it is hashed again."""
    key = stat_key(path)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = sha256_file(path)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
    return digest


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new, renamed or removed names) to disk; a no-op where the OS
    cannot open folders (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _dir_siblings(dest: Path, kind: str) -> list[Path]:
    """Leftover ``.<name>.<kind>-*`` folders that :func:`atomic_dir` makes beside ``dest``."""
    if not dest.parent.is_dir():
        return []
    return [p for p in dest.parent.glob(f".{dest.name}.{kind}-*") if p.is_dir()]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on clean exit it replaces ``path`` whole.

    For sets of files that must change together (a checkpoint's weights and its state), so a
    reader never sees files from two different writes side by side. The files written into the
    folder are fsynced, then the folder is renamed into place. An existing ``path`` is first
    renamed aside to ``.<name>.old-*`` and removed afterwards; if the process dies between those
    two renames, :func:`recover_atomic_dir` puts the old folder back. On an exception the
    temporary folder is removed and ``path`` is left untouched. Leftovers of earlier interrupted
    writes are removed after a successful one.
    """
    import shutil

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_atomic_dir(dest)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        aside = dest.with_name(f".{dest.name}.old-{tag}")
        if dest.exists():
            os.replace(dest, aside)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        for stale in [aside, *_dir_siblings(dest, "old"), *_dir_siblings(dest, "tmp")]:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_atomic_dir(path: str | os.PathLike[str]) -> bool:
    """Undo an :func:`atomic_dir` write that died between its two renames.

    When ``path`` is missing but a ``.<name>.old-*`` folder (the previous complete version) is
    beside it, the newest such folder is moved back to ``path``. Returns True if it did.
    Incomplete ``.<name>.tmp-*`` folders are never promoted.
    """
    dest = Path(path)
    if dest.exists():
        return False
    olds = sorted(_dir_siblings(dest, "old"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], dest)
    fsync_dir(dest.parent)
    return True


# ---- reading user files: bounded, decoded, parsed, with errors that name the file ----------------

MAX_TEXT_BYTES = 64 << 20
"""Largest text / JSON / YAML file relsafe reads (64 MiB): anything bigger is refused, not loaded."""

YAML_MAX_DEPTH = 100
"""Deepest nesting of a YAML document (a 5,000-deep ``[[[...]]]`` is refused, not a RecursionError)."""

YAML_MAX_NODES = 200_000
"""Most nodes a YAML document may stand for *after* alias expansion (an alias bomb is refused)."""


def read_text_file(path: str | os.PathLike[str], what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable, oversized or non-UTF-8 file is an
    :class:`~relsafe.errors.InputError` that names ``what`` and the path."""
    from relsafe.errors import InputError

    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise InputError(f"{what} {p} is a folder, not a file")
        if size > MAX_TEXT_BYTES:
            raise InputError(
                f"{what} {p} is {size / 2**20:.0f} MiB; relsafe reads text files up to "
                f"{MAX_TEXT_BYTES >> 20} MiB"
            )
        raw = p.read_bytes()
    except FileNotFoundError as e:
        raise InputError(f"{what} not found: {p}") from e
    except OSError as e:
        raise InputError(f"cannot read {what} {p}: {e.strerror or e}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{what} {p} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r})"
        ) from e


def read_json_file(
    path: str | os.PathLike[str], what: str = "JSON file", expect: type | None = dict
) -> Any:
    """Parse the JSON in ``path`` (read with :func:`read_text_file`); malformed JSON, or a top-level
    value that is not of type ``expect`` (a mapping by default; ``None`` accepts any), is an
    :class:`~relsafe.errors.InputError` naming the file and line."""
    from relsafe.errors import InputError

    text = read_text_file(path, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: line {e.lineno}, column {e.colno}: malformed JSON: {e.msg}"
        ) from e
    except RecursionError as e:
        raise InputError(f"{path}: JSON nested too deeply") from e
    if expect is not None and not isinstance(obj, expect):
        kind = {dict: "an object (mapping)", list: "a list"}.get(expect, expect.__name__)
        raise InputError(f"{path}: the top level must be {kind}, got {type(obj).__name__}")
    return obj


def read_format_file(
    path: str | os.PathLike[str], fmt: str, version: int, what: str
) -> dict[str, Any]:
    """The JSON header of a relsafe folder format (an index, a classifier): a mapping whose
    ``format`` is ``fmt`` and ``format_version`` is ``version``. Anything else, malformed JSON
    included, is a :class:`~relsafe.errors.CheckpointError` naming the file (``what``: the
    format's name in messages, e.g. ``"gallery index"``)."""
    from relsafe.errors import CheckpointError, RelsafeError

    try:
        meta = read_json_file(path, f"{what} file")
    except RelsafeError as e:
        raise CheckpointError(str(e)) from e
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path}: not a relsafe {what} file")
    if meta.get("format_version") != version:
        raise CheckpointError(
            f"{path}: format_version {meta.get('format_version')!r}; this relsafe reads {version}"
        )
    return meta


def _bounded_loader(text: str, source: str) -> Any:
    """A :class:`yaml.SafeLoader` on ``text`` that refuses documents nested deeper than
    :data:`YAML_MAX_DEPTH` or standing for more than :data:`YAML_MAX_NODES` nodes once aliases are
    expanded, before anything is constructed (so an alias bomb costs nothing)."""
    import yaml

    from relsafe.errors import InputError

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            if self.depth > YAML_MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise InputError(
                    f"{source}: line {mark.line + 1}: YAML nested deeper than {YAML_MAX_DEPTH} "
                    "levels"
                )
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def get_single_node(self) -> Any:
            node = super().get_single_node()
            _check_expanded(node, source)
            return node

    return Loader(text)


def _check_expanded(node: Any, source: str) -> None:
    """Refuse a composed document standing for more than :data:`YAML_MAX_NODES` values once its
    aliases are expanded (an alias bomb), for the pure-Python and the libyaml composer alike."""
    if node is not None and _expanded_size(node) > YAML_MAX_NODES:
        from relsafe.errors import InputError

        raise InputError(
            f"{source}: the YAML stands for more than {YAML_MAX_NODES:,} values once its "
            "aliases (*refs) are expanded (an alias bomb?); relsafe refuses it"
        )


def _expanded_size(root: Any) -> int:
    """Nodes ``root`` stands for with every alias expanded, computed with memoisation (aliases are
    shared node objects in PyYAML's graph), iteratively, saturating early past the limit."""
    import yaml

    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being sized (a recursive alias points back)
    stack: list[Any] = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in size:
            stack.pop()
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        else:
            size[key] = 1
            stack.pop()
            continue
        pending = [c for c in children if id(c) not in size and id(c) not in open_]
        if pending and key not in open_:
            open_.add(key)
            stack.extend(pending)
            continue
        open_.discard(key)
        size[key] = min(1 + sum(size.get(id(c), 1) for c in children), YAML_MAX_NODES + 1)
        stack.pop()
    return size[id(root)]


_FAST_YAML_BYTES = 16_384
"""Documents at least this long are composed by libyaml (when present and the document is
not nested too deeply): PyYAML's pure-Python parser needs about 10 s for a 250 kB vocabulary file."""


def _fast_loader(text: str) -> Any:
    """libyaml's safe loader on ``text``, or None when libyaml is missing, the text is short, or
    the document nests deeper than :data:`YAML_MAX_DEPTH` (the C composer recurses without a
    bound, so the depth is measured first on libyaml's event stream, which its parser produces
    iteratively; a deeper document goes to the bounded pure-Python loader, which refuses it)."""
    import yaml

    if len(text) < _FAST_YAML_BYTES or not getattr(yaml, "__with_libyaml__", False):
        return None
    opens = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    closes = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, opens):
                depth += 1
                if depth > YAML_MAX_DEPTH:
                    return None
            elif isinstance(event, closes):
                depth -= 1
    except yaml.YAMLError:  # malformed (or past libyaml's own limits): the bounded loader says why
        return None
    return yaml.CSafeLoader(text)


def compose_yaml(text: str, source: str) -> tuple[Any, Any]:
    """``(loader, node)``: the composed YAML graph of ``text`` under the bounds of
    :func:`load_yaml_text` (for callers that need line numbers); ``node`` is None when empty."""
    fast = _fast_loader(text)
    if fast is not None:
        node = fast.get_single_node()
        try:
            _check_expanded(node, source)
        except Exception:
            fast.dispose()
            raise
        return fast, node
    loader = _bounded_loader(text, source)
    try:
        return loader, loader.get_single_node()
    except RecursionError as e:  # pragma: no cover - the depth bound comes first
        from relsafe.errors import InputError

        raise InputError(f"{source}: YAML nested too deeply") from e


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML ``text`` with PyYAML's safe loader, bounded in depth and in alias expansion
    (:data:`YAML_MAX_DEPTH`, :data:`YAML_MAX_NODES`). Malformed YAML raises :class:`yaml.YAMLError`
    (the caller names the file and line); a bound raises :class:`~relsafe.errors.InputError`."""
    loader, node = compose_yaml(text, source)
    try:
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
