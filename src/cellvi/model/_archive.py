"""One-file saved models: a zip holding the saved-model folder's files and a manifest of their SHA-256.

Layout (no sub-folders)::

    manifest.json        {"format": "cellvi-archive/1", "files": {name: {"sha256": hex, "size": bytes}}}
    model.json           as in a saved-model folder (see cellvi.model._files)
    model.safetensors
    adata.h5ad           only with save_anndata=True

Opening an archive never trusts its paths: only the names above are accepted (anything else, ``..``,
absolute paths, sub-folders, duplicates or links is refused before anything is written), each file is
copied by its fixed name into a fresh temporary folder, its size and SHA-256 checked against the
manifest, and the folder is then read like any saved model: JSON and safetensors, nothing executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelFileError
from . import _files

ARCHIVE_FORMAT = "cellvi-archive/1"
MANIFEST_NAME = "manifest.json"
MEMBERS = (_files.META_NAME, _files.WEIGHTS_NAME, _files.ADATA_NAME)
MAX_MANIFEST_BYTES = 1 << 20


def is_archive(path) -> bool:
    """True if ``path`` is a file that is a zip (a folder or a missing path is not)."""
    return isinstance(path, (str, os.PathLike)) and Path(path).is_file() and zipfile.is_zipfile(path)


def write_archive(path, folder: Path, overwrite: bool) -> None:
    """Zip the saved-model ``folder`` into ``path`` with a manifest; written beside ``path`` and renamed."""
    final = Path(path)
    if final.exists() and not overwrite:
        raise ModelFileError(f"{final} already exists. Pass overwrite=True to replace it.")
    if final.is_dir():
        raise ModelFileError(f"{final} is a folder; an archive must be a file path (e.g. model.zip).")
    names = [n for n in MEMBERS if (folder / n).is_file()]
    manifest = {
        "format": ARCHIVE_FORMAT,
        "files": {n: {"sha256": _files.sha256(folder / n), "size": (folder / n).stat().st_size} for n in names},
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.saving-", dir=final.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1))
            for n in names:
                zf.write(folder / n, arcname=n)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _checked_members(zf: zipfile.ZipFile, path) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    allowed = set(MEMBERS) | {MANIFEST_NAME}
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ModelFileError(
            f"{path} is not a cellvi model archive: unexpected entries {bad[:3]} (only {sorted(allowed)} are "
            "allowed; paths with folders or '..' are refused). Nothing was extracted."
        )
    if len(set(names)) != len(names):
        raise ModelFileError(f"{path} has duplicate entries; refusing to read it.")
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16) or info.is_dir():
            raise ModelFileError(f"{path}: entry {info.filename!r} is a link or a folder; refusing to read it.")
    if MANIFEST_NAME not in names:
        raise ModelFileError(f"{path} is not a cellvi model archive: {MANIFEST_NAME} is missing.")
    return {i.filename: i for i in infos}


def _read_manifest(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path) -> dict:
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ModelFileError(f"{path}: {MANIFEST_NAME} is implausibly large; refusing to read it.")
    try:
        manifest = json.loads(zf.read(info).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: {MANIFEST_NAME} is corrupted ({exc}).") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != ARCHIVE_FORMAT or not isinstance(files, dict):
        raise ModelFileError(f"{path}: {MANIFEST_NAME} is not a {ARCHIVE_FORMAT!r} manifest.")
    return files


def extract(path, target: Path) -> None:
    """Check the archive ``path`` and copy its files into the folder ``target`` (see the module docstring)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable zip archive ({exc}).") from exc
    with zf:
        members = _checked_members(zf, path)
        files = _read_manifest(zf, members[MANIFEST_NAME], path)
        listed = set(files)
        present = set(members) - {MANIFEST_NAME}
        if listed != present:
            raise ModelFileError(
                f"{path}: the manifest lists {sorted(listed)} but the archive holds {sorted(present)}."
            )
        for name in sorted(present):
            entry, info = files[name], members[name]
            if not isinstance(entry, dict) or info.file_size != entry.get("size"):
                raise ModelFileError(f"{path}: {name} does not have the size recorded in the manifest.")
            digest = hashlib.sha256()
            try:
                with zf.open(info) as src, open(target / name, "wb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        dst.write(block)
            except (zipfile.BadZipFile, OSError) as exc:  # includes zip's own CRC check
                raise ModelFileError(f"{path}: {name} is corrupted ({exc}).") from exc
            if digest.hexdigest() != entry.get("sha256"):
                raise ModelFileError(
                    f"{path}: the SHA-256 of {name} differs from the manifest's: the archive is corrupted or "
                    "was altered. Restore it from a backup or save the model again."
                )


@contextmanager
def opened(path):
    """Yield a saved-model folder for ``path``: the folder itself, or a checked temporary copy of an
    archive's files (removed afterwards)."""
    if not is_archive(path):
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="cellvi-archive-"))
    try:
        extract(path, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
