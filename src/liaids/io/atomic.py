"""All-or-nothing writes: a crash or an error never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from liaids.errors import LiaidsError


def _is_non_empty(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


@contextlib.contextmanager
def staged_output_dir(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Let the caller fill a hidden sibling folder that replaces ``out`` only on success.

    The staging folder sits in ``out``'s parent (same file system), so the final move is a rename. On any
    exception inside the block the staging folder is removed and ``out`` is left as it was.

    Args:
        out: the output folder to produce. Its parent is created when missing.
        overwrite: replace an existing non-empty ``out`` (only at the end, after the block succeeded).

    Yields:
        The staging folder to write into.

    Raises:
        LiaidsError: ``out`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise LiaidsError("output exists and is not a folder", out)
    if out == Path.cwd() or out in Path.cwd().parents or out.parent == out:
        raise LiaidsError("output folder must not be the current folder, one above it, or the root", out)
    if _is_non_empty(out) and not overwrite:
        raise LiaidsError("output folder exists and is not empty (use overwrite to replace it)", out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as exc:
        raise LiaidsError(f"cannot create the output folder ({exc.strerror or exc})", out) from exc
    try:
        stage.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
        yield stage
        # Checked again: another process may have filled ``out`` while the block ran.
        if _is_non_empty(out) and not overwrite:
            raise LiaidsError("output folder was filled by someone else while writing", out)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
            try:
                os.replace(stage, out)
            except BaseException:
                os.replace(old, out)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling file and a rename.

    Readers see either the previous content or the new one, never a partial file.

    Args:
        path: destination file; its parent folder is created when missing.
        data: the bytes to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp files are private (0600): keep the old file's mode, or an ordinary one.
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: destination file.
        text: the text to write.
        encoding: text encoding.
    """
    atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_output_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes) that replaces ``path`` only on success.

    For writers that need a file name (such as NIfTI writers choosing compression from ``.nii.gz``).

    Raises:
        LiaidsError: the folder cannot be created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LiaidsError(f"cannot create the output folder ({exc.strerror or exc})", path.parent) from exc
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
