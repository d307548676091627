"""collab.flower.credentials: what `python -m collab.flower.deploy --secure` makes for a run, checked with
the libraries that will read it: the certificate chain and names with `cryptography`, the TLS handshake
with Python's own `ssl` (as the SuperNodes' and `flwr`'s HTTP client verify the SuperLink), the node keys
with Flower's own loaders; owner-only permissions; a rerun reuses them; a folder that may have leaked is
refused."""

import contextlib
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from collab.flower import credentials
from collab.flower.credentials import CredentialsError

N = 3


@pytest.fixture
def made(tmp_path):
    return credentials.ensure(tmp_path / "run" / "credentials", N)


def test_every_file_is_made_for_its_owner_alone(made):
    assert sorted(p.name for p in made.folder.iterdir()) == sorted(p.name for p in made.files())
    assert len(made.files()) == 3 + 2 * N
    assert stat.S_IMODE(made.folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in made.files()} == {0o600}
    assert not list(made.folder.parent.glob(".credentials*"))  # nothing left beside it


def test_the_superlink_certificate_is_signed_by_the_ca_for_loopback(made):
    ca = x509.load_pem_x509_certificate(made.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)  # raises where the signature or issuer is not the CA's
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    key = serialization.load_pem_private_key(made.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()


def serve(made, ready, port):
    """Accept two TLS handshakes with the SuperLink's certificate and key, as its HTTP server does."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(made.server_certificate, made.server_key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port.append(listener.getsockname()[1])
        ready.set()
        for _ in range(2):
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):  # the refused client's handshake fails here too
                context.wrap_socket(conn, server_side=True).close()


def handshake(port, context, host):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            return tls.version()


def test_only_a_client_with_the_ca_certificate_connects(made):
    """A TLS server with the SuperLink's certificate: a client that trusts the run's CA connects to 127.0.0.1,
    one with the system's CAs only (a SuperNode without `--root-certificates`) is refused."""
    ready, port = threading.Event(), []
    server = threading.Thread(target=serve, args=(made, ready, port), daemon=True)
    server.start()
    ready.wait(10)
    with_ca = ssl.create_default_context(cafile=made.ca_certificate)
    assert handshake(port[0], with_ca, "127.0.0.1").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        handshake(port[0], ssl.create_default_context(), "127.0.0.1")
    server.join(10)


def test_node_keys_are_what_flower_reads(made):
    """The private key in OpenSSH format as `flower-supernode --auth-supernode-private-key` loads it, its public
    key as `flwr supernode register` loads it: a NIST curve, the same key, one pair per node."""
    public = []
    for n in range(N):
        private = serialization.load_ssh_private_key(made.node_key(n).read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        registered = try_load_public_key(made.node_public_key(n))
        assert registered == public_key_to_bytes(private.public_key())
        public.append(registered)
    assert len(set(public)) == N


def test_a_half_written_folder_is_never_used(tmp_path):
    """Files left beside the folder by a launcher stopped while it wrote are thrown away, not reused."""
    unfinished = tmp_path / ".credentials.999"
    unfinished.mkdir(mode=0o700)
    (unfinished / "ca.pem").write_text("half")
    made = credentials.ensure(tmp_path / "credentials", 1)
    assert not unfinished.exists() and b"half" not in made.ca_certificate.read_bytes()


def test_a_rerun_reuses_the_same_credentials(made):
    before = {p.name: p.read_bytes() for p in made.files()}
    again = credentials.ensure(made.folder, N)
    assert {p.name: p.read_bytes() for p in again.files()} == before


def test_other_hosts_are_named_where_asked(tmp_path):
    made = credentials.ensure(tmp_path / "credentials", 1, hosts=("10.1.2.3", "link.example", *credentials.LOOPBACK))
    names = x509.load_pem_x509_certificate(made.server_certificate.read_bytes()).extensions
    san = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["link.example", "localhost"]
    with pytest.raises(CredentialsError, match="does not name 10.9.9.9"):
        credentials.ensure(made.folder, 1, hosts=("10.9.9.9",))


def test_a_folder_others_may_read_or_missing_a_key_is_refused(made):
    os.chmod(made.node_key(1), 0o644)
    with pytest.raises(CredentialsError, match=r"node_01\.key is open to other users \(mode 0644\).*delete"):
        credentials.ensure(made.folder, N)
    os.chmod(made.node_key(1), 0o600)
    os.chmod(made.folder, 0o755)
    with pytest.raises(CredentialsError, match="credentials is open to other users"):
        credentials.ensure(made.folder, N)
    os.chmod(made.folder, 0o700)
    made.node_key(2).unlink()
    with pytest.raises(CredentialsError, match=r"lacks node_02\.key"):
        credentials.ensure(made.folder, N)
