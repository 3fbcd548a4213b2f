"""Content-keyed caches under paths.data_dir that any number of processes can build at once.

A cache entry is a directory named by a hash of everything it was built from. It is built in a
private temporary directory beside its final name and renamed into place, under a file lock, so a
reader sees either nothing or the whole entry, and two processes never build the same entry twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

# Bump when the layout of cached entries changes, so old entries are rebuilt rather than misread.
CACHE_FORMAT = 1


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (and bytes, hashed as they are)."""
    digest = hashlib.sha256(str(CACHE_FORMAT).encode())
    for part in parts:
        digest.update(b"\0")
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def lock_for(path: Path) -> FileLock:
    """The lock that guards building `path`; the lock file sits beside it, writable by whoever the
    umask lets write (taking a lock opens its file for writing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", mode=0o666 & ~umask())


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, first calling `build(tmp_dir)` and renaming tmp_dir to it if it is missing."""
    if final.is_dir():
        return final
    with lock_for(final):
        if final.is_dir():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            # mkdtemp makes 0700; a cache is prepared once per shared filesystem, so it follows the
            # umask as run files do, and teammates can read it.
            os.chmod(tmp, 0o777 & ~umask())
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
