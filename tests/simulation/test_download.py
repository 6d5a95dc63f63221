"""Opt-in download of a published dataset file, against an HTTP server of the test's own on loopback."""

import http.server
import os
import threading

import numpy as np
import pytest

from fedsim.simulation import datasets


class _Server(http.server.ThreadingHTTPServer):
    """Serves `files` (name -> bytes) with HTTP range support; records the Range headers it saw."""

    def __init__(self, files, cut_after=None):
        self.files, self.cut_after, self.ranges = files, cut_after, []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        if requested:
            start = int(requested.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None and not requested:  # the connection drops mid-file
            self.wfile.write(body[:self.server.cut_after])
            return
        self.wfile.write(body)


@pytest.fixture
def published(tmp_path):
    """emnist_all.sqlite.lzma (a small one in TFF's format), as bytes."""
    rng = np.random.RandomState(0)
    splits = {split: {f"w{i}": {"pixels": rng.rand(3, 28, 28).astype(np.float32), "label": rng.randint(0, 10, 3)} for i in range(2)}
              for split in ("digits_only_train", "digits_only_test", "all_train", "all_test")}
    (tmp_path / "source").mkdir()
    database = datasets.write_sqlite(str(tmp_path / "source" / "emnist_all.sqlite"), splits, index=False)
    compressed = datasets.compress_lzma(database)
    with open(compressed, "rb") as stream:
        return stream.read()


def _serve(files, cut_after=None):
    server = _Server(files, cut_after)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_download_is_off_by_default_and_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDSIM_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="Pass download=True"):
        datasets.emnist.load_data(cache_dir=str(tmp_path))


def test_load_data_downloads_when_asked(tmp_path, monkeypatch, published):
    server, url = _serve({"emnist_all.sqlite.lzma": published})
    try:
        monkeypatch.setenv("FEDSIM_DATASETS_URL", url)
        train, test = datasets.emnist.load_data(cache_dir=str(tmp_path / "cache"), download=True)
        assert train.client_ids == ["w0", "w1"] and len(list(train.create_tf_dataset_for_client("w1"))) == 3
        assert (tmp_path / "cache" / "emnist_all.sqlite.lzma").read_bytes() == published
        assert not list((tmp_path / "cache").glob("*.partial"))
        monkeypatch.setenv("FEDSIM_DOWNLOAD", "1")  # the environment variable asks too
        with pytest.raises(datasets.DownloadError, match="HTTP 404"):
            datasets.cifar100.load_data(cache_dir=str(tmp_path / "cache"))
    finally:
        server.shutdown()


def test_an_interrupted_download_resumes_and_appears_only_when_complete(tmp_path, published):
    server, url = _serve({"f.lzma": published}, cut_after=len(published) // 3)
    destination = str(tmp_path / "f.lzma")
    try:
        with pytest.raises(datasets.DownloadError, match=rf"received {len(published) // 3} of {len(published)} bytes"):
            datasets.download_file(f"{url}/f.lzma", destination)
        assert not os.path.exists(destination) and os.path.getsize(destination + ".partial") == len(published) // 3
        datasets.download_file(f"{url}/f.lzma", destination)  # continues from the partial file
        assert server.ranges == [None, f"bytes={len(published) // 3}-"]
        with open(destination, "rb") as stream:
            assert stream.read() == published
    finally:
        server.shutdown()


def test_a_wrong_hash_is_refused_and_nothing_is_left(tmp_path, published):
    server, url = _serve({"f.lzma": published})
    destination = str(tmp_path / "f.lzma")
    try:
        with pytest.raises(datasets.DownloadError, match="is not the expected"):
            datasets.download_file(f"{url}/f.lzma", destination, expected_sha256="0" * 64)
        assert not os.path.exists(destination) and not os.path.exists(destination + ".partial")
    finally:
        server.shutdown()
