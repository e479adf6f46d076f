"""fetch (cache, resume, verification, offline) and the dataset registry, against a local server."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data import registry
from lmforge.data.download import cached_path, fetch
from lmforge.data.readers import iter_documents
from lmforge.errors import DataError


class Server:
    """Serves in-memory files on 127.0.0.1, honouring Range unless honour_range is False."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path, server.files.get(self.path.split("?")[0]))
                if body is None:
                    self.send_error(404)
                    return
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    body = body[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="session")
def shakespeare(shared_data) -> bytes:
    return (shared_data / "tinyshakespeare" / "input.txt").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_then_cache_hit(server, shakespeare):
    server.files["/input.txt"] = shakespeare
    url = server.url + "/input.txt"
    path = fetch(url, sha(shakespeare), len(shakespeare), progress=False)
    assert path.read_bytes() == shakespeare and path == cached_path(url)
    assert fetch(url, sha(shakespeare), progress=False) == path
    assert len(server.requests) == 1  # the second call never asked the server


@pytest.mark.parametrize("honour_range", [True, False])
def test_resume_from_partial_file(server, shakespeare, honour_range):
    server.files["/input.txt"] = shakespeare
    server.honour_range = honour_range
    url = server.url + "/input.txt"
    part = cached_path(url).with_name(cached_path(url).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(shakespeare[:400_000])
    path = fetch(url, sha(shakespeare), len(shakespeare), progress=False)
    assert path.read_bytes() == shakespeare and not part.exists()
    assert server.requests == [("/input.txt", "bytes=400000-")]


def test_checksum_mismatch_deletes_and_raises(server):
    server.files["/f.txt"] = b"corrupted"
    url = server.url + "/f.txt"
    with pytest.raises(DataError, match="sha256") as error:
        fetch(url, sha(b"original"), progress=False)
    assert "\n" not in str(error.value)
    assert not cached_path(url).exists() and not list(cached_path(url).parent.glob("*.part"))
    with pytest.raises(DataError, match="expected 3"):
        fetch(url, size=3, progress=False)


def test_offline_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/input.txt"
    with pytest.raises(DataError, match="you are offline") as error:
        fetch(url, progress=False)
    message = str(error.value)
    assert "\n" not in message and url in message and "data.source=PATH" in message
    assert not cached_path(url).exists()


def test_http_error(server):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(server.url + "/missing.txt", progress=False)


def test_shakespeare_registry_entry(server, shakespeare, monkeypatch):
    server.files["/input.txt"] = shakespeare
    monkeypatch.setattr(registry, "SHAKESPEARE_URL", server.url + "/input.txt")
    documents = list(iter_documents("shakespeare", progress=False))
    assert len(documents) == 1 and documents[0].text.encode() == shakespeare
    assert documents[0].name == "input.txt"  # not the cache path: splits match everywhere


def test_hf_dataset_through_datasets_server(server, tmp_path, monkeypatch):
    def parquet(rows: list[str]) -> bytes:
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"id": list(range(len(rows))), "text": rows}), path)
        return path.read_bytes()

    server.files["/files/train.parquet"] = parquet([f"train story {i}" for i in range(5)])
    server.files["/files/val.parquet"] = parquet(["val story"])
    server.files["/files/test.parquet"] = parquet(["test story"])
    listing = {
        "parquet_files": [
            {
                "dataset": "me/ds",
                "config": "default",
                "split": split,
                "url": f"{server.url}/files/{split}.parquet",
                "filename": f"{split}.parquet",
                "size": len(server.files[f"/files/{split}.parquet"]),
            }
            for split in ("train", "val", "test")
        ]
    }
    listing["parquet_files"][1]["split"] = "validation"
    server.files["/parquet?dataset=me%2Fds"] = json.dumps(listing).encode()
    monkeypatch.setenv("LMFORGE_HF_DATASETS_SERVER", server.url)
    documents = list(iter_documents("hf:me/ds", progress=False))
    assert [d.text for d in documents] == [*(f"train story {i}" for i in range(5)), "val story"]
    assert [d.split for d in documents] == ["train"] * 5 + ["val"]
    test_only = list(iter_documents("hf:me/ds:default:test", progress=False))
    assert [(d.text, d.split) for d in test_only] == [("test story", None)]
    with pytest.raises(DataError, match="no field 'body' \\(fields: id, text\\)"):
        list(iter_documents("hf:me/ds", text_field="body", progress=False))
