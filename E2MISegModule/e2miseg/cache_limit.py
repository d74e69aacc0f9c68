"""Keep an on-disk cache folder bounded: least recently used entries go first.

The OpenVINO runtime caches one converted network (IR: ``NAME.xml`` + ``NAME.bin``) per model and window
shape, and OpenVINO's own compiled blobs beside it (``compiled/HASH.blob``). Window shapes follow the
images (2D networks see each image's slice size), so without a bound a Slicer session or a cohort of
differently sized scans grows the cache by tens of megabytes per new shape, forever.

An entry is the set of files in one folder sharing a stem (the IR's two files go together). Recency is
the newest modification time of its files: the runtime touches an IR when it reuses it, so IRs are
evicted least-recently-used first. OpenVINO does not say which blob it read, so a blob's recency is
when it was written; evicting a blob still in use costs one recompilation (seconds), never a wrong
result. Hidden files are another process's writes in progress and are left alone.
"""
from __future__ import annotations

import os
from pathlib import Path

# Per cache folder. 16 entries hold every window shape a typical session meets (3D models use one
# window shape; a 2D model one per distinct slice size); the byte cap keeps large networks (hundreds of
# MB per entry) to a few. The entry just written or used is always kept, even when it alone is larger.
MAX_ENTRIES = 16
MAX_BYTES = 2 * 1024 ** 3


def touch(*paths: Path) -> None:
    """Mark cache files as just used (their modification time is the LRU clock); a read-only cache is fine."""
    for path in paths:
        try:
            os.utime(path)
        except OSError:
            pass


def entries(folder: Path) -> list[tuple[float, int, str, list[Path]]]:
    """(last used, bytes, stem, files) per entry of ``folder``, least recently used first."""
    groups: dict[str, list[Path]] = {}
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    for path in children:
        if path.name.startswith(".") or not path.is_file():
            continue
        groups.setdefault(path.name.split(".", 1)[0], []).append(path)
    found = []
    for stem, files in groups.items():
        try:
            stats = [f.stat() for f in files]
        except OSError:  # removed meanwhile by another process
            continue
        found.append((max(s.st_mtime for s in stats), sum(s.st_size for s in stats), stem, files))
    return sorted(found, key=lambda entry: (entry[0], entry[2]))


def prune(folder: Path, max_entries: int | None = None, max_bytes: int | None = None, keep: str | None = None) -> list[str]:
    """Remove the least recently used entries of ``folder`` until at most ``max_entries`` (default
    ``MAX_ENTRIES``) remain and they take at most ``max_bytes`` (``MAX_BYTES``); the newest entry and the
    entry ``keep`` (a stem) always stay. Returns the stems removed."""
    max_entries = MAX_ENTRIES if max_entries is None else max_entries
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    found = entries(folder)
    if not found:
        return []
    newest = found[-1][2]
    count, total = len(found), sum(entry[1] for entry in found)
    removed = []
    for _, size, stem, files in found:
        if count <= max_entries and total <= max_bytes:
            break
        if stem in (newest, keep):
            continue
        for path in files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # cannot delete (permissions): leave it, the run goes on
                break
        else:
            count, total = count - 1, total - size
            removed.append(stem)
    return removed
