"""The released files: the row table (``sfd/release_rows.yaml``), fetching, verification and layout.

A *row* is a line of the paper's tables (``sfd-xl-800ep-ag``, …) or a bundle (``tokenizers``, ``eval``,
``train-from-release-latents``); it names the files it needs and the rows it also needs. A file comes from a Hugging
Face repository through ``huggingface_hub`` (into its cache, which resumes interrupted transfers and is shared with
every other tool; ``HF_HUB_OFFLINE=1`` uses the cache alone) or from a plain HTTPS URL (fetched here: resumed from the
partial file with an HTTP range request, checked, then renamed into place, so a destination is never half-written).
Sizes and SHA-256 are checked where the table knows them; a file that fails the check is deleted. Each file is then
laid out where the release's configs expect it, relative to the project root: a symbolic link into the hub cache, or
a copy (``copy=True``).
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import yaml

from sfd.files import atomic_path, file_sha256

ROWS_FILE = Path(__file__).with_name("release_rows.yaml")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched, failed its check, or the row table is wrong; the message is one line, and
    ``help`` (when set) says where to get each remaining file by hand."""

    def __init__(self, message: str, help: str = "") -> None:
        super().__init__(message)
        self.help = help


@dataclass(frozen=True)
class ReleaseFile:
    key: str
    dest: str  # relative to the project root
    repo: Optional[str] = None  # Hugging Face repository id
    path: Optional[str] = None  # one file of the repository
    pattern: Optional[str] = None  # a folder of the repository (glob), fetched as a snapshot
    url: Optional[str] = None  # plain HTTPS
    sha256: Optional[str] = None
    size: Optional[int] = None

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        return f"huggingface.co/{self.repo}/{self.path or self.pattern}"


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    files: tuple[str, ...]
    needs: tuple[str, ...] = ()
    fid: Optional[str] = None  # paper / GPU re-run
    config: Optional[str] = None  # the inference config that reproduces the row
    env: dict = field(default_factory=dict)  # launcher variables (guidance scale and guide iteration)


@dataclass(frozen=True)
class ReleaseTable:
    files: dict[str, ReleaseFile]
    rows: dict[str, Row]

    @classmethod
    def load(cls, path: str | Path = ROWS_FILE) -> "ReleaseTable":
        """Read and check the table: every file has one source, every row names known files and rows."""
        raw = yaml.safe_load(Path(path).read_text())
        files = {}
        for key, entry in raw["files"].items():
            unknown = set(entry) - {"repo", "path", "pattern", "url", "dest", "sha256", "size"}
            sources = [name for name in ("path", "pattern", "url") if entry.get(name)]
            if unknown or len(sources) != 1 or "dest" not in entry or (entry.get("url") is None) == (
                    entry.get("repo") is None):
                raise DownloadError(f"{path}: files.{key}: needs dest and exactly one of repo+path, repo+pattern "
                                    f"or url{' (unknown ' + ', '.join(sorted(unknown)) + ')' if unknown else ''}")
            files[key] = ReleaseFile(key, **entry)
        rows = {}
        for name, entry in raw["rows"].items():
            row = Row(name, entry["what"], tuple(entry["files"]), tuple(entry.get("needs", ())),
                      entry.get("fid"), entry.get("config"), dict(entry.get("env", {})))
            missing = [key for key in row.files if key not in files] + [
                need for need in row.needs if need not in raw["rows"]]
            if missing:
                raise DownloadError(f"{path}: rows.{name}: unknown file or row {', '.join(missing)}")
            rows[name] = row
        return cls(files, rows)

    def row(self, name: str) -> Row:
        if name not in self.rows:
            raise DownloadError(f"unknown row {name!r}; known rows: {', '.join(self.rows)}")
        return self.rows[name]

    def files_of(self, names: Iterable[str], with_needs: bool = True) -> list[ReleaseFile]:
        """The files the named rows need, with (``with_needs``) the rows they need in turn, each once, in table
        order."""
        wanted: dict[str, None] = {}
        pending = list(names)
        seen: set[str] = set()
        while pending:
            row = self.row(pending.pop(0))
            if row.name in seen:
                continue
            seen.add(row.name)
            wanted.update(dict.fromkeys(row.files))
            pending += list(row.needs) if with_needs else []
        return [self.files[key] for key in self.files if key in wanted]


# -- fetching -----------------------------------------------------------------------------------------------------

def check_file(path: Path, item: ReleaseFile) -> Optional[str]:
    """Why ``path`` is not the file the table describes (size or SHA-256), or None."""
    if item.size is not None and path.stat().st_size != item.size:
        return f"size {path.stat().st_size} is not the expected {item.size}"
    if item.sha256 is not None:
        digest = file_sha256(path)
        if digest != item.sha256:
            return f"sha256 {digest} is not the expected {item.sha256}"
    return None


def partial_path(dest: Path) -> Path:
    """Where an interrupted HTTPS transfer is kept so that the next run resumes it (a fixed name, unlike the
    per-process temporaries of sfd.files)."""
    return dest.with_name(f".{dest.name}.partial")


def fetch_url(item: ReleaseFile, dest: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch ``item.url`` to ``dest``: resume a partial transfer with a range request, check size and SHA-256, then
    rename into place. A failed check deletes the download."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(item.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have > 0 and response.status == 206
            if have and not resumed:
                log(f"  {dest.name}: the server does not resume; starting over")
            length = response.headers.get("Content-Length")
            expected = (have if resumed else 0) + int(length) if length is not None else None
            with open(partial, "ab" if resumed else "wb") as handle:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
        received = partial.stat().st_size
        if expected is not None and received < expected:
            raise DownloadError(f"{item.url}: transfer interrupted at {received} of {expected} bytes (the partial "
                                f"download {partial} is kept; rerun to resume)")
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already complete
            pass
        else:
            raise DownloadError(f"{item.url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
        raise DownloadError(f"{item.url}: {reason} (the partial download {partial} is kept; rerun to resume)") \
            from None
    problem = check_file(partial, item)
    if problem:
        partial.unlink()
        raise DownloadError(f"{item.url}: {problem}; the download was deleted")
    os.replace(partial, dest)
    return dest


def fetch_hub(item: ReleaseFile) -> Path:
    """The file (or snapshot folder) in the Hugging Face cache, downloading it when needed."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        if item.path:
            return Path(hf_hub_download(item.repo, item.path))
        folder = Path(snapshot_download(item.repo, allow_patterns=[item.pattern]))
        return folder / item.pattern.split("*")[0].rstrip("/")
    except LocalEntryNotFoundError:
        raise DownloadError(f"{item.source}: not in the Hugging Face cache and the hub cannot be reached "
                            "(offline, or HF_HUB_OFFLINE=1)") from None
    except HfHubHTTPError as error:
        raise DownloadError(f"{item.source}: {str(error).splitlines()[0]}") from None


def lay_out(source: Path, dest: Path, copy: bool) -> None:
    """Make ``dest`` the file (or folder) ``source``: a symbolic link, or an atomic copy."""
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == source.resolve():
            return
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        else:
            raise DownloadError(f"{dest}: exists and is not the released file; move it away first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        dest.symlink_to(source.resolve())
    elif source.is_dir():
        shutil.copytree(source, dest, symlinks=False)
    else:
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)


def offline_help(files: Iterable[ReleaseFile], root: Path) -> str:
    """Where to get each file and where to put it, for a machine without network."""
    lines = ["Fetch these on a machine with network and put them at the paths shown (relative to "
             f"{root.resolve()}):"]
    lines += [f"  {item.dest}  <-  {item.source}" for item in files]
    return "\n".join(lines)


def download(names: Iterable[str], root: str | Path = ".", copy: bool = False, dry_run: bool = False,
             table: Optional[ReleaseTable] = None, log: Callable[[str], None] = print,
             with_needs: bool = True) -> list[Path]:
    """Fetch, check and lay out every file the named rows need under ``root`` (without the rows they need in turn
    when not ``with_needs``); returns the destinations. A file already in place (and passing its check) is not
    fetched again. ``dry_run`` only says what would be done."""
    table = table or ReleaseTable.load()
    root = Path(root)
    files = table.files_of(names, with_needs)
    done = []
    for item in files:
        dest = root / item.dest
        if dry_run:
            log(f"would fetch {item.source}\n    -> {dest}" + (f" (sha256 {item.sha256[:12]}…)" if item.sha256 else ""))
            continue
        if dest.exists() and not (item.pattern or check_file(dest, item)):
            log(f"{item.dest}: in place")
            done.append(dest)
            continue
        log(f"{item.dest}: fetching {item.source}")
        try:
            if item.url:
                fetch_url(item, dest, log)
            else:
                source = fetch_hub(item)
                problem = None if item.pattern else check_file(source, item)
                if problem:
                    raise DownloadError(f"{item.source}: {problem} (in the hub cache: {source})")
                lay_out(source, dest, copy)
        except DownloadError as error:
            remaining = files[files.index(item):]
            raise DownloadError(str(error), offline_help(remaining, root)) from None
        done.append(dest)
    return done
