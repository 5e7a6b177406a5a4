"""File helpers shared by every part of the package (stdlib only): atomic writes and sha256.

Every file probda writes appears under its final name complete or not at all:
`atomic_path` hands out a temp path beside the target and renames it into
place when the block succeeds; `replace_dir` does the same for folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp"):
    """Yield a temp file path beside `path`; on success it is renamed to `path`, on error removed.

    Args:
        path: the final file.
        suffix: ending of the temp name (writers that pick a format by extension need it, e.g. ".png").

    No partial file is ever visible under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 text through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_dir(src: str | Path, dst: str | Path) -> Path:
    """Move the finished folder `src` to `dst`, replacing an existing `dst` (rename, so readers never see half a folder)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
    return dst
