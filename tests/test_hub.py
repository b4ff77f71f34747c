"""scripts/download.py and sfd.hub against local stand-ins: a Hugging Face cache made by the test (offline mode) and
an HTTPS-like file server on 127.0.0.1 with range requests, interruptions and wrong contents."""

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest

from sfd.build import guide_checkpoint
from sfd.config import load_config
from sfd.hub import DownloadError, ReleaseTable, download, partial_path
from sfd.tokenizers.texture_vae import TextureVAEConfig
from tests.conftest import load_script

ROOT = Path(__file__).parents[1]
ROW = "sfd-xl-800ep-ag"


class FileServer(ThreadingHTTPServer):
    """Serves ``files`` {url path: bytes}; honours ``Range: bytes=N-``; ``cut_after`` bytes ends the next response
    early (an interrupted transfer); ``ranges`` records the Range header of every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after = None
        self.ranges: list = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        body = server.files.get(self.path.lstrip("/"))
        header = self.headers.get("Range")
        server.ranges.append(header)
        if body is None:
            self.send_error(404)
            return
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if server.cut_after is not None:
            payload, server.cut_after = payload[: server.cut_after], None
        self.wfile.write(payload)


@pytest.fixture
def server():
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub cache holding a stand-in for every hub file of the table, used offline."""
    cache = tmp_path / "hub-cache"
    table = ReleaseTable.load()
    commit = "0" * 40
    for item in table.files.values():
        if item.repo is None:
            continue
        repo_dir = cache / f"models--{item.repo.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        relative = item.path or item.pattern.split("*")[0] + "imagenet_train_256/shard_00000.safetensors"
        target = repo_dir / "snapshots" / commit / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f"stand-in for {relative}".encode())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def served_table(server, contents: dict[str, bytes], sha_of: dict[str, bytes] = None) -> ReleaseTable:
    """The real table with its HTTPS files served locally (their SHA-256 that of ``sha_of`` or the content)."""
    table = ReleaseTable.load()
    files = dict(table.files)
    for key, body in contents.items():
        server.files[key] = body
        expected = hashlib.sha256((sha_of or {}).get(key, body)).hexdigest()
        files[key] = dataclasses.replace(files[key], url=server.url(key), sha256=expected)
    return ReleaseTable(files, table.rows)


EVAL_FILES = {"adm_reference": b"npz stand-in " * 1000, "inception": b"inception stand-in " * 1000}


def test_a_row_is_fetched_and_laid_out_where_its_config_looks(tmp_path, fake_hub, server):
    table = served_table(server, EVAL_FILES)
    root = tmp_path / "project"
    download([ROW], root, table=table, log=lambda _: None)
    config_path = ROOT / table.rows[ROW].config
    config = load_config(config_path)
    assert (root / config.ckpt_path).read_bytes().startswith(b"stand-in")
    # the launcher's AUTOGUIDANCE_CKPT_ITER=70 rewrites the guide config's checkpoint to the 70K file
    guide = guide_checkpoint(config, config_path, iteration_k=70)
    assert (root / guide.relative_to(ROOT) if guide.is_absolute() else root / guide).is_file()
    for name in ("latents_stats.pt", "latents_sv_stats.pt"):
        assert (root / config.data.data_path / name).is_file()
    vae = TextureVAEConfig.from_yaml(ROOT / config.vae.config_path)
    assert (root / vae.ckpt_path).is_file() and (root / vae.ckpt_path).is_symlink()
    assert (root / config.data.fid_reference_file).read_bytes() == EVAL_FILES["adm_reference"]
    assert (root / "outputs/weights-inception-2015-12-05-6726825d.pth").read_bytes() == EVAL_FILES["inception"]
    # a second run finds everything in place and fetches nothing
    requests = len(server.ranges)
    download([ROW], root, table=table, log=lambda _: None)
    assert len(server.ranges) == requests


def test_an_interrupted_transfer_resumes(tmp_path, server):
    table = served_table(server, {"inception": EVAL_FILES["inception"]})
    server.cut_after = 1000
    with pytest.raises(DownloadError, match="rerun to resume"):
        download_one(table, "inception", tmp_path)
    dest = tmp_path / table.files["inception"].dest
    assert not dest.exists() and partial_path(dest).stat().st_size == 1000
    download_one(table, "inception", tmp_path)
    assert dest.read_bytes() == EVAL_FILES["inception"] and not partial_path(dest).exists()
    assert server.ranges[-1] == "bytes=1000-"


def download_one(table: ReleaseTable, key: str, root: Path) -> None:
    rows = {"only": dataclasses.replace(table.rows["eval"], name="only", files=(key,), needs=())}
    download(["only"], root, table=ReleaseTable(table.files, rows), log=lambda _: None)


def test_a_wrong_sha256_is_rejected_and_nothing_is_left(tmp_path, server):
    table = served_table(server, {"inception": b"corrupted"}, sha_of={"inception": b"the real weights"})
    with pytest.raises(DownloadError, match="sha256 [0-9a-f]{64} is not the expected [0-9a-f]{64}; the download "
                                            "was deleted"):
        download_one(table, "inception", tmp_path)
    dest = tmp_path / table.files["inception"].dest
    assert not dest.exists() and not partial_path(dest).exists()


def test_offline_without_the_files_names_them_and_where_they_go(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError) as caught:
        download(["tokenizers"], tmp_path, log=lambda _: None)
    assert "not in the Hugging Face cache" in str(caught.value) and "\n" not in str(caught.value)
    assert ("outputs/model_weights/va-vae-imagenet256-experimental-variants/ldm-imagenet256-f16d32-50ep.ckpt  <-  "
            "huggingface.co/hustvl/va-vae-imagenet256-experimental-variants/ldm-imagenet256-f16d32-50ep.ckpt"
            in caught.value.help)


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/download.py")


def test_list_and_dry_run_say_what_they_do(script, tmp_path, capsys):
    assert script.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert f"| {ROW} | 1.06 / 1.03 |" in listed and "| eval |" in listed
    assert script.main([ROW, "--dry-run", "--root", str(tmp_path)]) == 0
    planned = capsys.readouterr().out
    assert "huggingface.co/SFD-Project/SFD/model_weights/sfd_xl/checkpoints/4000000.pt" in planned
    assert "VIRTUAL_imagenet256_labeled.npz" in planned and "sha256 6726825d0af5" in planned
    assert not any(tmp_path.iterdir())
    assert script.main(["no-such-row"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown row 'no-such-row'; known rows: sfd-xl-800ep-ag")


def test_readme_shows_the_two_commands_of_every_row(script, capsys):
    """The README's block is the script's --commands output, so the table is the one source of both."""
    assert script.main(["--commands"]) == 0
    commands = capsys.readouterr().out.rstrip("\n")
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{commands}\n```" in readme
    table = ReleaseTable.load()
    assert all(f"python scripts/download.py {name}" in commands for name, row in table.rows.items() if row.config)
