"""`ddn download`: resumable, MD5-checked download + unpack, against a loopback server."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.download import command
from pipeline.download import fetch
from pipeline.errors import UserError

MEMBERS = {
    "VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg": bytes(range(256)) * 1200,
    "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000001\n",
}


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """Serves ``files`` on 127.0.0.1, honouring ``Range`` unless told not to."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.truncate_next = False  # send half the body once, then close: an interruption
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_next:
                    server.truncate_next = False
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes) -> tuple[str, str]:
        self.files[path] = data
        return self.base + path, hashlib.md5(data).hexdigest()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def archive() -> bytes:
    return make_tar(MEMBERS)


def assert_extracted(directory: Path) -> None:
    for name, data in MEMBERS.items():
        assert (directory / name).read_bytes() == data


def test_download_verify_extract_then_rerun_is_noop(tmp_path: Path, server: Server, archive):
    url, md5 = server.add("/voc.tar", archive)
    where = fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None)
    assert where == tmp_path / "VOCdevkit" / "VOC2012"
    assert_extracted(tmp_path)
    assert (tmp_path / "voc.tar").read_bytes() == archive  # kept by default
    assert not (tmp_path / "voc.tar.part").exists()
    assert server.ranges == [None]
    assert fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None) == where
    assert server.ranges == [None]  # nothing fetched again


def test_partial_download_is_resumed(tmp_path: Path, server: Server, archive):
    url, md5 = server.add("/voc.tar", archive)
    cut = len(archive) // 3
    (tmp_path / "voc.tar.part").write_bytes(archive[:cut])
    fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None)
    assert server.ranges == [f"bytes={cut}-"]
    assert_extracted(tmp_path)


def test_interrupted_download_resumes_on_rerun(tmp_path: Path, server: Server, archive):
    url, md5 = server.add("/voc.tar", archive)
    server.truncate_next = True
    with pytest.raises(UserError, match="re-run the same command to resume"):
        fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None)
    part = tmp_path / "voc.tar.part"
    kept = part.stat().st_size
    assert 0 < kept < len(archive)
    fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None)
    assert server.ranges == [None, f"bytes={kept}-"]
    assert_extracted(tmp_path)


def test_server_ignoring_range_restarts(tmp_path: Path, server: Server, archive):
    url, md5 = server.add("/voc.tar", archive)
    server.honour_range = False
    (tmp_path / "voc.tar.part").write_bytes(b"junk that must not survive")
    fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None)
    assert server.ranges == ["bytes=26-"]
    assert (tmp_path / "voc.tar").read_bytes() == archive
    assert_extracted(tmp_path)


def test_damaged_complete_part_is_fetched_again(tmp_path: Path, server: Server, archive):
    url, md5 = server.add("/voc.tar", archive)
    (tmp_path / "voc.tar.part").write_bytes(b"\0" * len(archive))
    fetch("voc", tmp_path, url=url, md5=md5, log=lambda m: None)
    assert server.ranges == [f"bytes={len(archive)}-", None]  # 416, then from scratch
    assert_extracted(tmp_path)


def test_wrong_md5_is_one_line_and_leaves_nothing(tmp_path: Path, server: Server, archive):
    url, _ = server.add("/voc.tar", archive)
    with pytest.raises(UserError, match="MD5 is [0-9a-f]{32}, expected 0{32}") as e:
        fetch("voc", tmp_path, url=url, md5="0" * 32, log=lambda m: None)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no extracted files, no .part, no archive


def test_http_error_and_bad_md5_option(tmp_path: Path, server: Server):
    with pytest.raises(UserError, match="HTTP 404"):
        fetch("sbd", tmp_path, url=server.base + "/missing.tgz", log=lambda m: None)
    with pytest.raises(UserError, match="not an MD5"):
        fetch("sbd", tmp_path, md5="abc", log=lambda m: None)


def test_archive_escaping_the_directory_is_refused(tmp_path: Path, server: Server):
    url, md5 = server.add("/evil.tar", make_tar({"../evil.txt": b"x"}))
    target = tmp_path / "dl"
    with pytest.raises(UserError, match="cannot unpack"):
        fetch("voc", target, url=url, md5=md5, log=lambda m: None)
    assert not (tmp_path / "evil.txt").exists()


def test_cli_no_keep_archive(tmp_path: Path, server: Server, archive):
    url, md5 = server.add("/VOCtrainval.tar", archive)
    args = ["voc", str(tmp_path), "--url", url, "--md5", md5, "--no-keep-archive"]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert "ready at" in result.output and "VOC2012" in result.output
    assert not (tmp_path / "VOCtrainval.tar").exists()
    assert_extracted(tmp_path)
    result = CliRunner().invoke(command, args)  # finished: the marker makes it a no-op
    assert result.exit_code == 0 and len(server.ranges) == 1
