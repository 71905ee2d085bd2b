"""Adapter archives under the artifact root (fsspec: a local folder by default, s3:// and others in
production): packaging for the embedded runner, the containment check for reported URIs, streaming."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.config import get_settings
from app.core.errors import ValidationFailed

CHUNK = 1 << 20


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def _norm(fs: Any, path: str) -> str:
    # A local path is resolved so that "root/../etc" cannot pass the prefix test below.
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return os.path.realpath(path)
    return path.rstrip("/")


def _protocols(fs: Any) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def check_under_root(uri: str) -> None:
    """The API later opens this URI to stream it; a trainer key must not be able to point it at an
    arbitrary file of the API host, so only URIs under the configured artifact root are accepted."""
    root_fs, root = _fs(get_settings().artifact_root)
    try:
        fs, path = _fs(uri)
    except (ValueError, ImportError) as exc:
        raise _bad(f"cannot open artifact_uri {uri!r}: {exc}") from exc
    root_n, path_n = _norm(root_fs, root), _norm(fs, path)
    if not (_protocols(fs) & _protocols(root_fs)) or not path_n.startswith(root_n.rstrip("/") + "/"):
        raise _bad(f"artifact_uri {uri} is not under the artifact root {get_settings().artifact_root}")


def _bad(message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": "artifact_uri", "code": "invalid", "message": message}])


def sha256_of(uri: str) -> str:
    fs, path = _fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def iter_bytes(uri: str) -> Iterator[bytes]:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def package(adapter_dir: Path, dest: Path) -> str:
    """tar.gz of the folder's files at the archive root, byte-identical for identical files (the same
    layout as the trainer worker's, so an archive's sha256 does not depend on who packed it)."""
    with (open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
          tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar):
        for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(adapter_dir)))
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def upload(local: Path, model_name: str, run_id: str) -> str:
    fs, root = _fs(get_settings().artifact_root)
    path = f"{root.rstrip('/')}/{model_name}/{run_id}.tar.gz"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(local), path)
    return fs.unstrip_protocol(path)
