"""Dataset sources: every split comes back as an in-memory uint8 :class:`ArrayDataset`.

``load_dataset(name, root)`` knows

* ``digits``        -- scikit-learn's embedded 8x8 digits (no files needed; the default for demos and tests)
* ``cifar10``/``cifar100`` -- the official python-pickle folders, read with a restricted unpickler,
  optionally downloaded (md5-checked) and safely extracted
* ``imagefolder``   -- ``root/{train,val|test}/<class>/*.{jpg,png,...}`` or a ``.tar.gz``/``.zip`` of that
  layout; decoded once (Pillow, in worker processes) and cached as a tensor file
* ``tiny-imagenet`` -- the distributed ``tiny-imagenet-200`` layout (folder or zip), same cache

Every dataset carries per-channel mean/std in [0, 1] (published values for CIFAR, train-split statistics
otherwise) and its class names.
"""

from __future__ import annotations

import difflib
import hashlib
import multiprocessing as mp
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from . import _decode
from .base import ArrayDataset, DataError
from .files import check_md5, download_url, extract_once, is_archive, iter_archive, restricted_load, safe_extract

__all__ = [
    "load_dataset",
    "list_datasets",
    "stratified_indices",
    "subset_dataset",
    "channel_stats",
    "default_data_root",
    "default_cache_dir",
    "decode_files",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
_CACHE_VERSION = 1

_CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        # published CIFAR-10 statistics (as used by airbench and most CIFAR-10 code)
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"],
        test=["test"],
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        # published CIFAR-100 statistics (RepDistiller's)
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    ),
}

_TINY = dict(
    folder="tiny-imagenet-200",
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    filename="tiny-imagenet-200.zip",
    md5="90528d7ca1a48142e341f4ef8d21d0de",
)

_NAMES = ("digits", "cifar10", "cifar100", "imagefolder", "tiny-imagenet")


def list_datasets() -> list[str]:
    return list(_NAMES)


def default_data_root() -> Path:
    """``$KDLAB_DATA`` or ``./data``: where dataset folders are looked for when ``root`` is not given."""
    return Path(os.environ.get("KDLAB_DATA", "data"))


def default_cache_dir() -> Path:
    """``$KDLAB_CACHE``, else ``$XDG_CACHE_HOME/kdlab``, else ``~/.cache/kdlab`` (archives' extraction/cache)."""
    if os.environ.get("KDLAB_CACHE"):
        return Path(os.environ["KDLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdlab"


# ------------------------------------------------------------------------------------------- public entry


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split_seed: int = 0,
    subset: int | float | None = None,
    test_subset: int | float | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    url: str | None = None,
    md5: str | None = None,
    workers: int | None = None,
    eval_split: str | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load ``(train, test)`` uint8 splits of dataset ``name``.

    ``root``: the folder holding the data (or, for ``imagefolder``/``tiny-imagenet``, an archive of it);
    defaults to ``$KDLAB_DATA`` or ``./data`` (unused by ``digits``).
    ``split_seed``: seeds the digits train/test split and the subset draws.
    ``subset``/``test_subset``: a stratified, seeded subset of the train/test split -- an int count or a
    float fraction in (0, 1]. Mean/std stay those of the full train split.
    ``download``: fetch CIFAR / Tiny-ImageNet from the official URL (``url``/``md5`` override it).
    ``cache_dir``: where decoded image folders (and extracted archives) are cached; default
    ``root/.kdlab-cache`` for folders, :func:`default_cache_dir` for archives and read-only folders.
    ``workers``: decode processes for image folders (default :func:`default_workers`; 0/1 = in this process).
    ``eval_split``: image-folder evaluation split folder (default ``val`` if present, else ``test``).
    """
    key = name.lower().replace("_", "-")
    if key in ("cifar-10", "cifar-100"):
        key = key.replace("-", "")
    if key == "digits":
        train, test = _load_digits(split_seed)
    elif key in _CIFAR:
        train, test = _load_cifar(key, root, download=download, url=url, md5=md5)
    elif key == "imagefolder":
        if root is None:
            raise DataError("imagefolder: pass root=<folder with train/ and val|test/ class folders, or a .tar.gz of it>")
        train, test = _load_imagefolder(Path(root), cache_dir=cache_dir, workers=workers, eval_split=eval_split)
    elif key in ("tiny-imagenet", "tinyimagenet", "tiny-imagenet-200"):
        train, test = _load_tiny_imagenet(root, cache_dir=cache_dir, workers=workers, download=download, url=url, md5=md5)
    else:
        close = difflib.get_close_matches(key, _NAMES, n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise DataError(f"unknown dataset {name!r}.{hint} Available: {', '.join(_NAMES)}")
    if subset is not None:
        train = subset_dataset(train, subset, seed=_mix(split_seed, 1))
    if test_subset is not None:
        test = subset_dataset(test, test_subset, seed=_mix(split_seed, 2))
    return train, test


# ------------------------------------------------------------------------------------ subsets and stats


def _mix(*ints: int) -> int:
    h = hashlib.blake2b(repr(ints).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def stratified_indices(labels: torch.Tensor | np.ndarray, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded, stratified draw of ``n`` items (per-class quotas by largest remainder)."""
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    total = len(y)
    if not 0 <= n <= total:
        raise DataError(f"stratified subset of {n} items requested from {total}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n / total) if total else counts.astype(float)
    take = np.floor(quota).astype(np.int64)
    rest = n - int(take.sum())
    if rest > 0:  # largest fractional part first, ties broken at random
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:rest]] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    return torch.from_numpy(idx.astype(np.int64))


def subset_dataset(ds: ArrayDataset, size: int | float, seed: int = 0) -> ArrayDataset:
    """A stratified, seeded subset of ``ds``: ``size`` items (int) or that fraction (float in (0, 1])."""
    n_all = len(ds)
    if isinstance(size, float):
        if not 0.0 < size <= 1.0:
            raise DataError(f"{ds.name}: a fractional subset must lie in (0, 1], got {size}")
        n = int(round(size * n_all))
    else:
        n = int(size)
    if n <= 0 or n > n_all:
        raise DataError(f"{ds.name}: subset of {n} items requested but the split has {n_all}")
    idx = stratified_indices(ds.labels, n, seed)
    return ArrayDataset(ds.images[idx], ds.labels[idx], list(ds.classes), ds.name, ds.mean, ds.std)


def channel_stats(images: torch.Tensor, chunk: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] of a uint8 ``(N, C, H, W)`` tensor (chunked; float64 accumulation)."""
    n, c = images.shape[:2]
    if n == 0:
        return tuple([0.0] * c), tuple([1.0] * c)
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].to(device="cpu", dtype=torch.float32)
        s += x.sum(dim=(0, 2, 3)).double()
        s2 += x.square_().sum(dim=(0, 2, 3)).double()
    count = n * images.shape[2] * images.shape[3]
    mean = s / count
    var = (s2 / count - mean * mean).clamp_min(0)
    std = var.sqrt().clamp_min(1e-3 * 255)
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


# ------------------------------------------------------------------------------------------------ digits


def _load_digits(split_seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (1797, 8, 8)
    y = d.target.astype(np.int64)
    test_idx = stratified_indices(y, 360, seed=_mix(split_seed, 0)).numpy()
    mask = np.ones(len(y), bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask)
    images = torch.from_numpy(x).unsqueeze(1).contiguous()
    labels = torch.from_numpy(y)
    classes = [str(i) for i in range(10)]
    tr_img = images[torch.from_numpy(train_idx)]
    mean, std = channel_stats(tr_img)
    train = ArrayDataset(tr_img, labels[torch.from_numpy(train_idx)], classes, "digits", mean, std)
    test = ArrayDataset(images[torch.from_numpy(test_idx)], labels[torch.from_numpy(test_idx)], classes, "digits", mean, std)
    return train, test


# ------------------------------------------------------------------------------------------------- CIFAR


def _cifar_folder(root: Path, folder: str, probe: str) -> Path | None:
    """``root/folder`` or ``root`` itself when it holds the batch file ``probe``."""
    for cand in (root / folder, root):
        if (cand / probe).is_file():
            return cand
    return None


def _load_cifar(
    key: str, root: str | os.PathLike[str] | None, *, download: bool, url: str | None, md5: str | None
) -> tuple[ArrayDataset, ArrayDataset]:
    meta = _CIFAR[key]
    root = Path(root) if root is not None else default_data_root()
    archive = root / meta["filename"]
    if root.is_file() and is_archive(root):  # root given as the tarball itself
        archive, root = root, root.parent
    # md5 to check: the caller's, else the official one unless the caller supplied their own URL
    want_md5 = md5 if md5 is not None else (meta["md5"] if url is None else None)
    folder = _cifar_folder(root, meta["folder"], meta["test"][0])
    if folder is None:
        if download:
            download_url(url or meta["url"], archive, md5=want_md5)
        if archive.is_file():
            check_md5(archive, want_md5)
            safe_extract(archive, root)
            folder = _cifar_folder(root, meta["folder"], meta["test"][0])
            if folder is None:
                raise DataError(f"{archive}: extracted, but it holds no {meta['folder']}/ folder")
        else:
            raise DataError(
                f"{key}: expected the python-version folder {root / meta['folder']} (with "
                f"{', '.join(meta['train'] + meta['test'])}). Set data.download=true to fetch {meta['url']} into "
                f"{root}, or data.root=<folder containing {meta['folder']}>"
            )
    names_file = folder / meta["meta"]
    if names_file.exists():
        m = restricted_load(names_file)
        if not isinstance(m, dict) or meta["names_key"] not in m:
            raise DataError(f"{names_file}: no {meta['names_key']!r} entry")
        classes = [_as_str(c) for c in m[meta["names_key"]]]
    else:
        classes = [str(i) for i in range(meta["num_classes"])]
    if len(classes) != meta["num_classes"]:
        raise DataError(f"{names_file}: {len(classes)} class names, expected {meta['num_classes']}")

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            path = folder / f
            if not path.exists():
                raise DataError(f"{key}: missing {path}; the folder is incomplete (re-extract, or set data.download=true)")
            d = restricted_load(path)
            if not isinstance(d, dict):
                raise DataError(f"{path}: expected a dict batch, got {type(d).__name__}")
            d = {_as_str(k): v for k, v in d.items()}
            if "data" not in d or meta["label_key"] not in d:
                raise DataError(f"{path}: missing 'data' or {meta['label_key']!r}")
            x = np.asarray(d["data"])
            y = np.asarray(d[meta["label_key"]], dtype=np.int64)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
                raise DataError(f"{path}: expected uint8 data (N, 3072) and N labels, got {x.dtype} {x.shape}, {len(y)} labels")
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise DataError(f"{path}: labels must lie in [0, {len(classes) - 1}], found [{y.min()}, {y.max()}]")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = read(meta["train"])
    xte, yte = read(meta["test"])
    mean, std = meta["mean"], meta["std"]
    return (ArrayDataset(xtr, ytr, classes, key, mean, std), ArrayDataset(xte, yte, classes, key, mean, std))


def _as_str(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------------------------- image decoding


def _pool_context() -> mp.context.BaseContext:
    # fork starts workers in milliseconds and they only run Pillow/numpy; elsewhere fall back to spawn
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def default_workers() -> int:
    """Decode processes by default: one per core (up to 8) on machines with 4+ cores, else 1.

    On a 2-vCPU VM a pool measured no faster (slightly slower) than decoding in-process, so small machines
    decode in this process; pass ``workers=`` to override.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        cores = os.cpu_count() or 1
    return min(cores, 8) if cores >= 4 else 1


def decode_files(paths: list[_decode.Source], workers: int | None = None, chunk: int = 500) -> np.ndarray:
    """Decode image files (paths or ``(name, bytes)``) into one uint8 ``(N, C, H, W)`` array.

    Chunks of ``chunk`` files are decoded in ``workers`` processes (default :func:`default_workers`) and
    written into one preallocated array as they arrive (peak memory: the result plus a few chunks). All
    images must share one size (else :class:`DataError` naming the first odd file); grayscale images are
    expanded to RGB when mixed with colour ones; truncated/corrupt files raise :class:`DataError` naming them.
    """
    if not paths:
        raise DataError("no image files to decode")
    workers = default_workers() if workers is None else int(workers)
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    out: np.ndarray | None = None

    def place(start: int, first: _decode.Source, res: tuple[np.ndarray | None, str | None]) -> None:
        nonlocal out
        arr, err = res
        if err is not None:
            raise DataError(err)
        assert arr is not None
        arr = arr.transpose(0, 3, 1, 2)  # (n, C, H, W)
        if out is None:
            out = np.empty((len(paths),) + arr.shape[1:], np.uint8)
        if arr.shape[2:] != out.shape[2:]:
            raise DataError(
                f"{_decode.source_name(first)}: image size {arr.shape[3]}x{arr.shape[2]} differs from "
                f"{out.shape[3]}x{out.shape[2]} ({_decode.source_name(paths[0])}); an in-memory image folder needs "
                "one size (resize the images or use StreamingImageFolder)"
            )
        if arr.shape[1] != out.shape[1]:  # grayscale mixed with colour -> colour
            if arr.shape[1] == 1:
                arr = np.repeat(arr, 3, axis=1)
            else:
                out = np.repeat(out, 3, axis=1)
        out[start : start + len(arr)] = arr

    if workers <= 1 or len(chunks) == 1:
        for i, c in enumerate(chunks):
            place(i * chunk, c[0], _decode.decode_chunk(c))
    else:
        ex = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context())
        try:
            for i, (c, res) in enumerate(zip(chunks, ex.map(_decode.decode_chunk, chunks))):
                place(i * chunk, c[0], res)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)  # a bad file: do not decode the rest
            raise
        ex.shutdown()
    assert out is not None
    return out


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _list_class_folders(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and _is_image(p)), key=lambda p: p.name)


def _file_list_key(items: list[tuple[str, list[Path]]], extra: str = "") -> str:
    """Hash of (split, relative path, size, mtime) for every file: the cache key of a decoded folder."""
    h = hashlib.sha256(f"kdlab-imagefolder-v{_CACHE_VERSION}|{extra}".encode())
    for split, files in items:
        h.update(f"[{split}]".encode())
        for p in files:
            st = p.stat()
            h.update(f"{p.parent.name}/{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _writable_dir(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(d, os.W_OK)


def _save_cache(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - corrupt/partial cache: rebuild it
        return None
    if not isinstance(payload, dict) or payload.get("version") != _CACHE_VERSION:
        return None
    return payload


def _build_payload(splits: dict[str, tuple[list, list[int]]], classes: list[str], workers: int | None) -> dict:
    """Decode every split; images become uint8 (N, C, H, W) tensors; mean/std from the train split."""
    out: dict = {"version": _CACHE_VERSION, "classes": list(classes), "splits": list(splits)}
    shapes = {}
    for split, (files, labels) in splits.items():
        srcs = [str(p) if isinstance(p, Path) else p for p in files]
        arr = decode_files(srcs, workers=workers)  # (N, C, H, W)
        shapes[split] = (arr.shape[1:], _decode.source_name(srcs[0]))
        out[f"{split}_images"] = torch.from_numpy(arr)
        out[f"{split}_labels"] = torch.tensor(labels, dtype=torch.int64)
    (tr_shape, tr_file) = shapes["train"]
    for split, (shape, first) in shapes.items():
        if shape[1:] != tr_shape[1:]:
            raise DataError(
                f"{first}: {split} images are {shape[2]}x{shape[1]} but train images are {tr_shape[2]}x{tr_shape[1]} ({tr_file})"
            )
        if shape[0] != tr_shape[0]:  # gray split vs colour split -> colour
            for s in shapes:
                if out[f"{s}_images"].shape[1] == 1:
                    out[f"{s}_images"] = out[f"{s}_images"].expand(-1, 3, -1, -1).contiguous()
    mean, std = channel_stats(out["train_images"])
    out["mean"], out["std"] = list(mean), list(std)
    return out


def _datasets_from_payload(payload: dict, name: str, eval_split: str) -> tuple[ArrayDataset, ArrayDataset]:
    classes = list(payload["classes"])
    mean, std = tuple(payload["mean"]), tuple(payload["std"])
    train = ArrayDataset(payload["train_images"], payload["train_labels"], classes, name, mean, std)
    test = ArrayDataset(payload[f"{eval_split}_images"], payload[f"{eval_split}_labels"], classes, name, mean, std)
    return train, test


def _cached(cache_file: Path, build: Callable[[], dict]) -> dict:
    payload = _load_cache(cache_file)
    if payload is None:
        payload = build()
        _save_cache(cache_file, payload)
    return payload


# -------------------------------------------------------------------------------------------- imagefolder


def _find_data_root(root: Path, marker: Callable[[Path], bool], depth: int = 2) -> Path | None:
    """``root`` itself or the single non-hidden descendant (up to ``depth`` levels) for which ``marker`` holds."""
    if marker(root):
        return root
    if depth == 0 or not root.is_dir():
        return None
    subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    found = [r for r in (_find_data_root(d, marker, depth - 1) for d in subs) if r is not None]
    if len(found) > 1:
        raise DataError(f"{root}: several dataset folders inside ({', '.join(map(str, found))}); pass one of them")
    return found[0] if found else None


def _archive_cache(archive: Path, cache_dir: str | os.PathLike[str] | None, tag: str) -> tuple[Path, str]:
    st = archive.stat()
    key = hashlib.sha256(f"{tag}|v{_CACHE_VERSION}|{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = archive.name
    for suf in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    return base, f"{stem}-{key}"


def _imagefolder_splits(
    data_root: Path, eval_split: str | None
) -> tuple[dict[str, tuple[list[Path], list[int]]], list[str], str]:
    train_dir = data_root / "train"
    if eval_split is None:
        eval_split = next((s for s in ("val", "test") if (data_root / s).is_dir()), None)
        if eval_split is None:
            raise DataError(
                f"{data_root}: no val/ or test/ folder next to train/ (expected root/{{train,val|test}}/<class>/*.jpg)"
            )
    elif not (data_root / eval_split).is_dir():
        raise DataError(f"{data_root / eval_split}: evaluation split folder not found")
    class_dirs = _list_class_folders(train_dir)
    if not class_dirs:
        raise DataError(f"{train_dir}: no class folders (expected {train_dir}/<class>/*.jpg)")
    classes = [d.name for d in class_dirs]
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, tuple[list[Path], list[int]]] = {}
    for split in ("train", eval_split):
        files: list[Path] = []
        labels: list[int] = []
        for d in _list_class_folders(data_root / split):
            if d.name not in index:
                raise DataError(f"{d}: class folder {d.name!r} is not among the train classes ({train_dir})")
            imgs = _list_images(d)
            if not imgs:
                raise DataError(f"{d}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")
            files += imgs
            labels += [index[d.name]] * len(imgs)
        if not files:
            raise DataError(f"{data_root / split}: no images")
        splits[split] = (files, labels)
    return splits, classes, eval_split


def _scan_archive(
    archive: Path, eval_split: str | None
) -> tuple[dict[str, tuple[list[_decode.Source], list[int]]], list[str], str]:
    """Read an image-folder archive in one streaming pass: ``[prefix/]{train,val|test}/<class>/<image>``."""
    files: dict[tuple[tuple[str, ...], str, str], list[tuple[str, bytes]]] = {}
    dirs: set[tuple[str, ...]] = set()
    is_img = lambda p: len(p.parts) >= 3 and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")  # noqa: E731
    for rel, data in iter_archive(archive, want=is_img):
        parts = rel.parts
        if data is None:
            dirs.add(parts)
            continue
        files.setdefault((parts[:-3], parts[-3], parts[-2]), []).append((f"{archive}:{rel}", data))
    prefixes = {pre for (pre, split, _) in files if split == "train"}
    if not prefixes:
        raise DataError(f"{archive}: no train/<class>/ images inside (expected [top/]{{train,val|test}}/<class>/*.jpg)")
    if len(prefixes) > 1:
        raise DataError(f"{archive}: several train/ folders inside ({', '.join('/'.join(p) or '.' for p in sorted(prefixes))})")
    pre = prefixes.pop()
    present = {split for (p, split, _) in files if p == pre} | {
        d[len(pre)] for d in dirs if len(d) > len(pre) and d[: len(pre)] == pre
    }
    if eval_split is None:
        eval_split = next((s for s in ("val", "test") if s in present), None)
        if eval_split is None:
            raise DataError(f"{archive}: no val/ or test/ folder next to {'/'.join(pre + ('train',))}/")
    classes = sorted(c for (p, split, c) in files if p == pre and split == "train")
    index = {c: i for i, c in enumerate(classes)}
    for d in sorted(dirs):  # class folders that hold no image
        if len(d) == len(pre) + 2 and d[: len(pre)] == pre and d[-2] in ("train", eval_split) and not d[-1].startswith("."):
            if (pre, d[-2], d[-1]) not in files:
                raise DataError(f"{archive}:{'/'.join(d)}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")
    splits: dict[str, tuple[list[_decode.Source], list[int]]] = {}
    for split in ("train", eval_split):
        srcs: list[_decode.Source] = []
        labels: list[int] = []
        for p, s_, c in sorted(k for k in files if k[0] == pre and k[1] == split):
            if c not in index:
                raise DataError(f"{archive}:{'/'.join(pre + (split, c))}: class {c!r} is not among the train classes")
            items = sorted(files[(p, s_, c)], key=lambda t: t[0])
            srcs += items
            labels += [index[c]] * len(items)
        if not srcs:
            raise DataError(f"{archive}: no images under {'/'.join(pre + (split,))}/")
        splits[split] = (srcs, labels)
    return splits, classes, eval_split


def _load_imagefolder(
    root: Path, *, cache_dir: str | os.PathLike[str] | None, workers: int | None, eval_split: str | None
) -> tuple[ArrayDataset, ArrayDataset]:
    if root.is_file() and is_archive(root):
        # Archives are read in one streaming pass and decoded from memory: nothing is extracted to disk
        # (safer, and ~10x faster than writing and deleting 60k small files). Cache key: the archive's
        # path, size and mtime.
        base, stem = _archive_cache(root, cache_dir, f"imagefolder|{eval_split}")
        name = f"imagefolder:{stem.rsplit('-', 1)[0]}"

        def build() -> dict:
            splits, classes, ev = _scan_archive(root, eval_split)
            return _build_payload(splits, classes, workers) | {"eval_split": ev}

        payload = _cached(base / f"{stem}.pt", build)
        return _datasets_from_payload(payload, name, payload["eval_split"])
    if not root.exists():
        raise DataError(
            f"imagefolder: {root} not found (expected a folder root/{{train,val|test}}/<class>/*.jpg or a .tar.gz of it)"
        )
    has_train = lambda p: (p / "train").is_dir()  # noqa: E731
    data_root = _find_data_root(root, has_train)
    if data_root is None:
        raise DataError(f"{root}: no train/ folder found (expected {root}/{{train,val|test}}/<class>/*.jpg)")
    splits, classes, ev = _imagefolder_splits(data_root, eval_split)
    key = _file_list_key([(s, f) for s, (f, _) in splits.items()], extra=ev)
    cdir = Path(cache_dir) if cache_dir is not None else data_root / ".kdlab-cache"
    if cache_dir is None and not _writable_dir(cdir):
        cdir = default_cache_dir()
    payload = _cached(cdir / f"imagefolder-{key}.pt", lambda: _build_payload(splits, classes, workers) | {"eval_split": ev})
    return _datasets_from_payload(payload, f"imagefolder:{data_root.name}", ev)


# ------------------------------------------------------------------------------------------ tiny-imagenet


def _tiny_splits(data_root: Path) -> tuple[dict[str, tuple[list[Path], list[int]]], list[str]]:
    wnids_file = data_root / "wnids.txt"
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    if not wnids:
        raise DataError(f"{wnids_file}: no class ids")
    classes = sorted(set(wnids))
    index = {w: i for i, w in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for w in classes:
        d = data_root / "train" / w / "images"
        if not d.is_dir():
            raise DataError(f"{d}: missing train folder for class {w} listed in {wnids_file}")
        imgs = _list_images(d)
        if not imgs:
            raise DataError(f"{d}: empty class folder")
        files += imgs
        labels += [index[w]] * len(imgs)
    ann = data_root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{ann}: missing (the validation labels of Tiny-ImageNet)")
    vfiles: list[Path] = []
    vlabels: list[int] = []
    for ln, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            continue
        fname, w = parts[0], parts[1]
        if w not in index:
            raise DataError(f"{ann}:{ln}: class {w!r} is not in {wnids_file}")
        p = data_root / "val" / "images" / fname
        if not p.is_file():
            raise DataError(f"{p}: listed in {ann}:{ln} but missing")
        vfiles.append(p)
        vlabels.append(index[w])
    if not vfiles:
        raise DataError(f"{ann}: no validation entries")
    order = sorted(range(len(vfiles)), key=lambda i: vfiles[i].name)
    return {"train": (files, labels), "val": ([vfiles[i] for i in order], [vlabels[i] for i in order])}, classes


def _load_tiny_imagenet(
    root: str | os.PathLike[str] | None,
    *,
    cache_dir: str | os.PathLike[str] | None,
    workers: int | None,
    download: bool,
    url: str | None,
    md5: str | None,
) -> tuple[ArrayDataset, ArrayDataset]:
    root = Path(root) if root is not None else default_data_root()
    is_tiny = lambda p: (p / "wnids.txt").is_file() and (p / "train").is_dir()  # noqa: E731
    archive = root if (root.is_file() and is_archive(root)) else root / _TINY["filename"]
    data_root = _find_data_root(root, is_tiny) if root.is_dir() else None
    if data_root is None:
        want_md5 = md5 if md5 is not None else (_TINY["md5"] if url is None else None)
        if download and not archive.is_file():
            download_url(url or _TINY["url"], archive, md5=want_md5)
        if not archive.is_file():
            raise DataError(
                f"tiny-imagenet: expected the folder {root / _TINY['folder']} (wnids.txt, train/<wnid>/images, "
                f"val/images + val/val_annotations.txt). Set data.download=true to fetch {_TINY['url']}, "
                "or data.root=<that folder or its zip>"
            )
        check_md5(archive, want_md5)
        dest = archive.parent if _writable_dir(archive.parent) else default_cache_dir()
        target = dest / f"{archive.name}.extract"
        extract_once(archive, target)
        data_root = _find_data_root(target, is_tiny)
        if data_root is None:
            raise DataError(f"{archive}: extracted, but no Tiny-ImageNet layout (wnids.txt, train/) inside")
    splits, classes = _tiny_splits(data_root)
    key = _file_list_key([(s, f) for s, (f, _) in splits.items()], extra="tiny-imagenet")
    cdir = Path(cache_dir) if cache_dir is not None else data_root / ".kdlab-cache"
    if cache_dir is None and not _writable_dir(cdir):
        cdir = default_cache_dir()
    payload = _cached(cdir / f"tiny-imagenet-{key}.pt", lambda: _build_payload(splits, classes, workers))
    return _datasets_from_payload(payload, "tiny-imagenet", "val")
