"""Fetch the classic tutorial's published COCO model, check it, convert it safely, cache the result.

``python -m captioner import-legacy --download`` downloads the two zip files the tutorial
links to, checks that they are intact zip archives holding the expected files (with limits
on size, so a hostile archive cannot fill the disk), and converts them with ``import_legacy``
(``weights_only`` state dicts, a restricted unpickler for the vocabulary). The converted model
is cached; the next call reuses it without downloading.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from captioner.core.errors import LegacyImportError, ModelFormatError
from captioner.core.paths import cache_dir
from captioner.core.repository.legacy import import_legacy
from captioner.core.repository.storage import load_model

MODEL_ZIP_URL = "https://www.dropbox.com/s/ne0ixz5d58ccbbz/pretrained_model.zip?dl=1"  # the tutorial's links
VOCAB_ZIP_URL = "https://www.dropbox.com/s/26adb7y9m98uisa/vocap.zip?dl=1"
MAX_DOWNLOAD_BYTES = 2 * 1024**3
MAX_MEMBER_BYTES = 1024**3
EXPECTED = {"model": ("encoder-5-3000.pkl", "decoder-5-3000.pkl"), "vocab": ("vocab.pkl",)}


def download_and_import(out_dir: str | os.PathLike | None = None, *, model_zip_url: str = MODEL_ZIP_URL,
                        vocab_zip_url: str = VOCAB_ZIP_URL, timeout: float = 60.0) -> Path:
    """The converted tutorial model's directory (``out_dir`` or the cache), downloading it if needed."""
    out = Path(out_dir) if out_dir else cache_dir("tutorial-coco")
    if (out / "config.json").is_file():
        try:
            load_model(out)
            return out  # already converted
        except ModelFormatError:
            pass  # damaged: convert again
    with tempfile.TemporaryDirectory(prefix="captioner-legacy-") as work:
        work = Path(work)
        files = {}
        for kind, url in (("model", model_zip_url), ("vocab", vocab_zip_url)):
            archive = _download(url, work / f"{kind}.zip", timeout)
            files.update(_extract_expected(archive, url, EXPECTED[kind], work))
        sources = "\n".join(f"- `{name}` from {url}" for name, url in
                            (("pretrained_model.zip", model_zip_url), ("vocap.zip", vocab_zip_url)))
        return import_legacy(files["encoder-5-3000.pkl"], files["decoder-5-3000.pkl"], files["vocab.pkl"], out,
                             card_note=f"Downloaded from:\n{sources}\n")


def _download(url: str, target: Path, timeout: float) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": "captioner"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as file:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > MAX_DOWNLOAD_BYTES:
                raise LegacyImportError(f"{url} is {total} bytes, more than the {MAX_DOWNLOAD_BYTES} allowed")
            digest, size = hashlib.sha256(), 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(target).name) as progress:
                while chunk := response.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise LegacyImportError(f"{url} sends more than {MAX_DOWNLOAD_BYTES} bytes")
                    file.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
            if total and size != total:
                raise LegacyImportError(f"download of {url} was cut off ({size} of {total} bytes)")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise LegacyImportError(f"could not download {url}: {reason}") from None
    tqdm.write(f"{url}: {size} bytes, sha256 {digest.hexdigest()}")
    return target


def _extract_expected(archive: Path, url: str, names: tuple[str, ...], work: Path) -> dict[str, Path]:
    """Copy the expected members (found by base name, in any folder) out of the archive, with size limits."""
    try:
        with zipfile.ZipFile(archive) as zf:
            by_name = {Path(info.filename).name: info for info in zf.infolist() if not info.is_dir()}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise LegacyImportError(f"the archive from {url} lacks {', '.join(missing)} "
                                        f"(it holds {', '.join(sorted(by_name)[:10]) or 'nothing'})")
            out = {}
            for name in names:
                info = by_name[name]
                if info.file_size > MAX_MEMBER_BYTES:
                    raise LegacyImportError(f"{name} in {url} claims {info.file_size} bytes; refusing")
                out[name] = work / name  # our own name, never the member's path
                with zf.open(info) as member, open(out[name], "wb") as file:
                    shutil.copyfileobj(_Limited(member, MAX_MEMBER_BYTES), file)
            return out
    except zipfile.BadZipFile as error:
        raise LegacyImportError(f"the file from {url} is not a valid zip archive ({error})") from None
    except (zipfile.LargeZipFile, EOFError, OSError) as error:  # CRC errors surface as BadZipFile/OSError
        raise LegacyImportError(f"the archive from {url} is damaged ({error})") from None


class _Limited:
    """A reader that refuses to yield more than ``limit`` bytes (a member may lie about its size)."""

    def __init__(self, raw, limit: int):
        self.raw, self.left = raw, limit

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n >= 0 else self.left + 1)
        self.left -= len(data)
        if self.left < 0:
            raise LegacyImportError("a zip member is larger than it claims")
        return data
