"""fastjax.fetch against a local HTTP server on 127.0.0.1 (no other address is reached).

The server speaks what the real hosts do: plain files with HTTP Range (the dataset
releases), and the hub's two endpoints huggingface_hub 0.3x calls,
``GET /api/models/<repo>/revision/<rev>`` (the file list and commit) and
``HEAD/GET /<repo>/resolve/<rev>/<file>`` (X-Repo-Commit, ETag / X-Linked-Etag, size).
It serves a tiny CIFAR-10 python tarball in the release's layout and a tiny SigLIP in the
hub's repository layout (config.json + model.safetensors).
"""

import hashlib
import http.server
import io
import json
import pickle
import re
import socket
import tarfile
import threading

import numpy as np
import pytest

from fastjax.data import DatasetNotFoundError
from fastjax.data import formats
from fastjax.encode import hub, load_encoder
from fastjax.fetch import FetchError, datasets, weights
from fastjax.fetch import __main__ as cli
from fastjax.fetch.http import download

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "test-org/tiny-siglip"
TINY = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
            patch_size=4, image_size=8)


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch):
    """Any name other than 127.0.0.1 fails to resolve, so no test can leave this machine."""
    real = socket.getaddrinfo

    def local_only(host, *a, **k):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test_fetch: {host} is not 127.0.0.1")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("FASTJAX_DATA_ROOT", raising=False)
    monkeypatch.delenv("FASTJAX_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


class Server:
    """Routes path -> bytes (+ headers); `cut` paths send half their body on the first
    GET and close; every request is logged as (method, path, Range header)."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, dict]] = {}
        self.cut: set[str] = set()
        self.log: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _serve(self, body_too):
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                server.log.append((self.command, path, rng))
                if path not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, extra = server.files[path]
                start = int(re.match(r"bytes=(\d+)-", rng)[1]) if rng else 0
                if start >= len(data) and start:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if not body_too:
                    return
                if path in server.cut:
                    server.cut.discard(path)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def gets(self, path):
        return [r for m, p, r in self.log if m == "GET" and p == path]

    def add_repo(self, repo, commit, files: dict[str, bytes], etags: dict[str, str] = None):
        """A hub repository: its revision API (for "main" and the commit) and files."""
        info = json.dumps({"id": repo, "sha": commit,
                           "siblings": [{"rfilename": f} for f in files]}).encode()
        for rev in ("main", commit):
            self.files[f"/api/models/{repo}/revision/{rev}"] = (
                info, {"Content-Type": "application/json"})
            for name, data in files.items():
                etag = (etags or {}).get(name) or _etag(name, data)
                head = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
                if name.endswith(".safetensors"):  # Git LFS: the sha256 is the linked etag
                    head["X-Linked-Etag"] = f'"{etag}"'
                self.files[f"/{repo}/resolve/{rev}/{name}"] = (data, head)


def _etag(name, data):
    if name.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _cifar10_tarball(n=4, seed=0):
    """A cifar-10-python.tar.gz in the release's layout, n images per batch."""
    rng = np.random.default_rng(seed)
    buf, batches = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name, obj):
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))

        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batches[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             [int(x) for x in rng.integers(0, 10, n)])
            add(name, {b"data": batches[name][0], b"labels": batches[name][1]})
    return buf.getvalue(), batches


def _tiny_siglip(seed=0):
    """config.json + model.safetensors of a SigLIP vision tower at TINY sizes; the keys and
    shapes are the ones the loader asks for (its error for an empty checkpoint lists them)."""
    from safetensors.numpy import save

    from fastjax.encode.siglip import SiglipVisionConfig, convert_state_dict

    with pytest.raises(ValueError) as e:
        convert_state_dict({}, SiglipVisionConfig(**TINY))
    wanted = re.findall(r"missing parameter (\S+) \(expected shape \(([\d, ]*)\)\)", str(e.value))
    rng = np.random.default_rng(seed)
    sd = {k: rng.standard_normal([int(x) for x in s.split(",") if x.strip()]).astype(np.float32)
          for k, s in wanted}
    config = json.dumps({"model_type": "siglip", "vision_config": TINY}).encode()
    return {"config.json": config, "model.safetensors": save(sd)}, sd


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _md5(data):
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- the whole path

def test_config_fetch_then_run_finds_everything(server, tmp_path, monkeypatch, capsys):
    from fastjax import doctor

    tarball, batches = _cifar10_tarball()
    server.files["/cifar-10-python.tar.gz"] = (tarball, {})
    files, sd = _tiny_siglip()
    server.add_repo(REPO, COMMIT, files)
    monkeypatch.setitem(datasets.RELEASE_FILES, "cifar10", (datasets.Remote(
        server.url + "/cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz", _md5(tarball)),))
    monkeypatch.setitem(hub.HUB_REPOS, "siglip", {"base-patch16-224": hub.HubRepo(REPO, COMMIT)})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    root = tmp_path / "data"
    args = ["--config", "configs/cifar10.py", "--data-root", str(root)]

    assert doctor.main(args + ["--strict"]) == 1  # nothing yet
    assert "MISSING dataset cifar10" in capsys.readouterr().out
    assert cli.main(args + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cifar10: fetched" in out and "encoder siglip: fetched" in out
    assert doctor.main(args + ["--strict"]) == 0

    # The dataset: byte for byte, where the loader reads it, and it decodes to what we wrote.
    path = root / "cifar10" / "cifar-10-python.tar.gz"
    assert path.read_bytes() == tarball and not list(root.rglob("*.part"))
    assert datasets.locate("cifar10", "train", root) == path
    test = formats.read_cifar10_pickle(path)["test"]
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
    np.testing.assert_array_equal(test.images, batches["test_batch"][0].reshape(-1, 3, 32, 32)
                                  .transpose(0, 2, 3, 1))
    # The weights: found with no checkpoint (the pinned repository) and by hub id.
    for checkpoint in (None, REPO, f"{REPO}@{COMMIT}"):
        enc = load_encoder("siglip", checkpoint=checkpoint)
        assert enc.checkpoint == str(tmp_path / "hf" / "models--test-org--tiny-siglip" /
                                     "snapshots" / COMMIT / "model.safetensors")
        np.testing.assert_array_equal(enc.params["position_embedding"],
                                      sd["vision_model.embeddings.position_embedding.weight"])
    # A second fetch finds both and downloads nothing.
    n = len(server.log)
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count(": present") == 2 and len(server.log) == n
    # What the hub was asked: the revision's file list, then each file.
    assert ("GET", f"/api/models/{REPO}/revision/{COMMIT}", None) in server.log
    assert len(server.gets(f"/{REPO}/resolve/{COMMIT}/model.safetensors")) == 1


def test_a_run_never_downloads(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    server.add_repo(REPO, COMMIT, _tiny_siglip()[0])
    with pytest.raises(FileNotFoundError, match=rf"fastjax\.fetch {REPO}@main .*Nothing is "
                                                r"downloaded at run time"):
        load_encoder("siglip", checkpoint=REPO)
    with pytest.raises(FileNotFoundError, match=r"python -m fastjax\.fetch siglip"):
        load_encoder("siglip")
    with pytest.raises(DatasetNotFoundError):
        datasets.locate("cifar10", "train", tmp_path)
    assert server.log == []
    # An existing relative path is a path, not a hub id.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not hub.is_hub_id("org/model") and hub.is_hub_id("org/other@v1")


# ---------------------------------------------------------------- interrupted, resumed

def test_interrupted_release_download_resumes_with_range(server, tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    server.files["/f.bin"] = (data, {})
    dest = tmp_path / "f.bin"
    server.cut.add("/f.bin")
    with pytest.raises(FetchError, match=r"bytes kept in .*f\.bin\.part, run the same command "
                                         r"again to resume"):
        download(server.url + "/f.bin", dest, _md5(data), progress=False, retries=0)
    part = tmp_path / "f.bin.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not dest.exists()
    assert download(server.url + "/f.bin", dest, _md5(data), progress=False) == dest
    assert server.gets("/f.bin") == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == data and not part.exists()
    # Within one call a cut transfer is resumed by itself.
    server.cut.add("/f.bin")
    dest.unlink()
    download(server.url + "/f.bin", dest, _md5(data), progress=False, retries=1)
    assert server.gets("/f.bin")[2:] == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == data


def test_interrupted_hub_download_resumes(server, tmp_path, monkeypatch):
    # huggingface_hub keeps whole chunks only (10 MiB): cut after the first, leaving a part.
    files = {"config.json": b"{}", "model.safetensors": np.random.default_rng(2).integers(
        0, 256, 24 << 20, dtype=np.uint8).tobytes()}
    server.add_repo(REPO, COMMIT, files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    url = f"/{REPO}/resolve/{COMMIT}/model.safetensors"
    server.cut.add(url)
    ref = hub.HubRepo(REPO, COMMIT)
    with pytest.raises(FetchError, match=r"run the same command again to resume"):
        weights.fetch(ref, progress=False)
    assert hub.snapshot(ref) is None
    snap = weights.fetch(ref, progress=False)
    from huggingface_hub import constants

    assert server.gets(url) == [None, f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"]
    assert (snap / "model.safetensors").read_bytes() == files["model.safetensors"]


# ---------------------------------------------------------------- checksum mismatch

def test_checksum_mismatch_keeps_the_file_aside(server, tmp_path, monkeypatch, capsys):
    tarball, _ = _cifar10_tarball()
    server.files["/cifar-10-python.tar.gz"] = (tarball, {})
    monkeypatch.setitem(datasets.RELEASE_FILES, "cifar10", (datasets.Remote(
        server.url + "/cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz", "0" * 32),))
    assert cli.main(["cifar10", "--data-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    aside = tmp_path / "cifar10" / "cifar-10-python.tar.gz.checksum-mismatch"
    assert err.count("\n") == 1 and f"kept aside as {aside}" in err and _md5(tarball) in err
    assert aside.read_bytes() == tarball
    assert not (tmp_path / "cifar10" / "cifar-10-python.tar.gz").exists()
    with pytest.raises(DatasetNotFoundError):  # never used
        datasets.locate("cifar10", "train", tmp_path)


def test_hub_file_that_does_not_match_its_etag_is_set_aside(server, tmp_path, monkeypatch):
    files, _ = _tiny_siglip()
    good = _etag("model.safetensors", files["model.safetensors"])
    bad = dict(files, **{"model.safetensors": files["model.safetensors"][:-4] + b"    "})
    server.add_repo(REPO, COMMIT, bad, etags={"model.safetensors": good})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    ref = hub.HubRepo(REPO, COMMIT)
    with pytest.raises(FetchError, match=rf"checksum mismatch for model\.safetensors: .*{good}"):
        weights.fetch(ref, progress=False)
    assert hub.snapshot(ref) is None
    blobs = tmp_path / "hf" / "models--test-org--tiny-siglip" / "blobs"
    assert (blobs / f"{good}.checksum-mismatch").read_bytes() == bad["model.safetensors"]


def test_a_revision_without_safetensors_is_refused(server, tmp_path, monkeypatch):
    server.add_repo(REPO, COMMIT, {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FetchError, match=r"has no model\.safetensors; fastjax reads safetensors"):
        weights.fetch(hub.HubRepo(REPO, COMMIT), progress=False)
    assert not server.gets(f"/{REPO}/resolve/{COMMIT}/pytorch_model.bin")


# ---------------------------------------------------------------- server down

def test_server_down_is_one_line(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setitem(datasets.RELEASE_FILES, "cifar10", (datasets.Remote(
        url + "/cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz", "0" * 32),))
    assert cli.main(["cifar10", "--data-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastjax: error: cannot download")
    assert not list(tmp_path.rglob("*.part"))
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert cli.main([REPO, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach 127.0.0.1" in err
    # Off the network entirely (no name resolves), the same: one line, hub or tfds.
    monkeypatch.delenv("HF_ENDPOINT")
    assert cli.main(["siglip"]) == 2
    assert "cannot reach huggingface.co:443" in capsys.readouterr().err
    assert cli.main(["cifar10", "--via", "tfds", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "www.cs.toronto.edu:443 is unreachable" in err


def test_bad_items_are_refused_before_any_download(capsys, tmp_path):
    assert cli.main(["cifar11"]) == 2
    assert "unknown item 'cifar11'" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert "nothing to fetch" in capsys.readouterr().err
    assert cli.main(["cifar10"]) == 2  # no data root given anywhere
    assert "--data-root DIR or set FASTJAX_DATA_ROOT" in capsys.readouterr().err
    assert cli.main(["pathmnist", "--via", "tfds", "--data-root", str(tmp_path)]) == 2
    assert "tensorflow-datasets has no route here" in capsys.readouterr().err
