"""Careful file handling for datasets: restricted unpickling, md5-checked downloads, safe archive extraction.

Nothing here trusts the bytes it reads: pickles may only rebuild numpy arrays, archives may only create
regular files and folders inside the destination, and downloads are checked against a known md5.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from collections.abc import Callable, Iterator

from .base import DataError

__all__ = [
    "RestrictedUnpickler",
    "restricted_load",
    "file_md5",
    "check_md5",
    "download_url",
    "safe_extract",
    "is_archive",
    "extract_once",
    "iter_archive",
]

# (module, name) pairs a pickle of plain numpy arrays (the CIFAR python batches) needs. numpy >= 2 moved
# numpy.core to numpy._core; pickles written by either version name one or the other.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    (mod, name)
    for prefix in ("numpy.core", "numpy._core")
    for mod, name in (
        (f"{prefix}.multiarray", "_reconstruct"),
        (f"{prefix}.multiarray", "scalar"),
        (f"{prefix}.numeric", "_frombuffer"),
    )
) | frozenset({("numpy", "ndarray"), ("numpy", "dtype")})


def _safe_codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1")
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise DataError(f"refusing _codecs.encode with encoding {encoding!r} in a dataset pickle")
    return obj.encode(encoding, errors)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only numpy arrays, dtypes and plain Python containers/scalars.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``...) raises :class:`DataError`
    before it is looked up, so a malicious pickle cannot run code.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) == ("_codecs", "encode"):
            return _safe_codecs_encode
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"{self._source}: refusing to unpickle global {module}.{name}; only numpy arrays are allowed "
                "in dataset pickles (the file is corrupt or malicious)"
            )
        import numpy as np

        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # avoid numpy 2's deprecation shim
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._source}: persistent ids are not allowed in dataset pickles")


def restricted_load(path: str | os.PathLike[str], *, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``latin1`` reads Python-2 pickles like CIFAR's)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, source=str(path), encoding=encoding).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except Exception as exc:  # truncated / not a pickle
        raise DataError(f"{path}: cannot read pickle ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------------- download


def file_md5(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: str | os.PathLike[str], md5: str | None) -> None:
    """Raise :class:`DataError` naming ``path`` when its md5 is not ``md5`` (``None`` skips the check)."""
    if md5 is None:
        return
    got = file_md5(path)
    if got.lower() != md5.lower():
        raise DataError(
            f"{path}: md5 mismatch (expected {md5}, got {got}); the file is corrupt or incomplete — delete it and "
            "download again"
        )


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to the file ``dest`` (atomically, via ``dest.part``) and check its md5.

    An existing ``dest`` with the right md5 is kept as is. Raises :class:`DataError` on network errors and
    md5 mismatches (the bad download is removed).
    """
    dest = Path(dest)
    if dest.exists():
        try:
            check_md5(dest, md5)
            return dest
        except DataError:
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5(usedforsecurity=False)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "kdlab"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as out:
            for block in iter(lambda: resp.read(chunk_size), b""):
                h.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} to {dest}: {exc}") from exc
    got = h.hexdigest()
    if md5 is not None and got.lower() != md5.lower():
        part.unlink(missing_ok=True)
        raise DataError(f"{dest}: md5 mismatch after downloading {url} (expected {md5}, got {got}); try again")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------- extract

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")


def is_archive(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return name.endswith(_ARCHIVE_SUFFIXES)


def _check_member_name(archive: Path, name: str) -> PurePosixPath:
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing to extract member {name!r} with an absolute path")
    if ".." in rel.parts:
        raise DataError(f"{archive}: refusing to extract member {name!r}: it climbs out of the folder ('..')")
    return rel


def _inside(dest: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(dest.resolve())
        return True
    except ValueError:
        return False


def _check_tar(archive: Path, tf: tarfile.TarFile, dest: Path) -> None:
    for m in tf.getmembers():
        rel = _check_member_name(archive, m.name)
        if m.isdev() or m.ischr() or m.isblk() or m.isfifo():
            raise DataError(f"{archive}: refusing to extract device/fifo member {m.name!r}")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise DataError(f"{archive}: refusing to extract member {m.name!r} of unsupported type {m.type!r}")
        if m.issym() or m.islnk():
            link = PurePosixPath(m.linkname.replace("\\", "/"))
            if link.is_absolute():
                raise DataError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r} (absolute target)")
            # symlink targets are relative to the link's folder, hard-link targets to the archive root
            base = dest / rel.parent if m.issym() else dest
            if not _inside(dest, base / link):
                raise DataError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r}: it points outside the folder")


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a tar (any compression) or zip ``archive`` into ``dest`` refusing anything unsafe.

    Refused with :class:`DataError` (before anything is written): absolute member paths, ``..`` components,
    symlinks/hard links whose target leaves ``dest``, device files and fifos. Tar archives are then
    extracted with ``filter="data"`` where Python supports it (3.11.4+/3.12), a second line of defence.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member_name(archive, info.filename)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):  # only regular files and folders
                        raise DataError(f"{archive}: refusing to extract special member {info.filename!r}")
                zf.extractall(dest)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{archive}: not a valid zip archive ({exc})") from exc
        return dest
    try:
        with tarfile.open(archive) as tf:
            _check_tar(archive, tf, dest)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - old Pythons; our own checks above already ran
                tf.extractall(dest)
    except tarfile.TarError as exc:
        raise DataError(f"{archive}: cannot extract ({type(exc).__name__}: {exc})") from exc
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from exc
    return dest


def extract_once(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Safely extract ``archive`` into ``dest`` unless a completed extraction is already there.

    Extraction goes to a temporary sibling folder that is renamed into place when complete, so an
    interrupted run never leaves a half-extracted folder that looks finished.
    """
    dest = Path(dest)
    marker = dest / ".kdlab-extracted"
    if marker.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        safe_extract(archive, tmp)
        (tmp / ".kdlab-extracted").write_text(str(Path(archive).resolve()) + "\n")
        if dest.exists():  # a stale, incomplete extraction
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not marker.exists():  # somebody else finished first -> use theirs; otherwise a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _link_stays_inside(rel: PurePosixPath, linkname: str, symlink: bool) -> bool:
    link = linkname.replace("\\", "/")
    if link.startswith("/"):
        return False
    base = str(rel.parent) if symlink else ""
    norm = posixpath.normpath(posixpath.join(base, link))
    return not (norm == ".." or norm.startswith("../") or norm.startswith("/"))


def iter_archive(
    archive: str | os.PathLike[str], want: Callable[[PurePosixPath], bool] = lambda p: True
) -> Iterator[tuple[PurePosixPath, bytes | None]]:
    """Stream a tar (any compression) or zip archive without extracting it: yields ``(path, bytes)`` for regular
    files for which ``want(path)`` holds and ``(path, None)`` for folders.

    The same refusals as :func:`safe_extract` apply (absolute paths, ``..``, links leaving the archive, device
    files -> :class:`DataError`); nothing is written to disk. Links that stay inside yield their target's bytes.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    if archive.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _check_member_name(archive, info.filename)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):
                        raise DataError(f"{archive}: refusing special member {info.filename!r}")
                    if info.is_dir():
                        yield rel, None
                    elif want(rel):
                        yield rel, zf.read(info)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{archive}: not a valid zip archive ({exc})") from exc
        return
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                rel = _check_member_name(archive, m.name)
                if m.isdev() or m.ischr() or m.isblk() or m.isfifo():
                    raise DataError(f"{archive}: refusing device/fifo member {m.name!r}")
                if m.issym() or m.islnk():
                    if not _link_stays_inside(rel, m.linkname, m.issym()):
                        raise DataError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r}: it points outside the archive")
                if m.isdir():
                    yield rel, None
                elif (m.isfile() or m.issym() or m.islnk()) and want(rel):
                    fh = tf.extractfile(m)
                    if fh is None:
                        raise DataError(f"{archive}: cannot read member {m.name!r}")
                    yield rel, fh.read()
    except tarfile.TarError as exc:
        raise DataError(f"{archive}: cannot read ({type(exc).__name__}: {exc})") from exc
    except (EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from exc
