"""The credentials of one secure federation: a certificate authority, the SuperLink's TLS certificate
signed by it, and an authentication key pair per SuperNode, made with `cryptography` in the formats
Flower 1.41 reads.

    credentials/            mode 0700, every file 0600
        ca.pem              the CA's certificate: SuperNodes and `flwr` verify the SuperLink with it
        superlink.pem       the SuperLink's certificate (names 127.0.0.1 and localhost, and any host given)
        superlink.key       its private key (PEM, PKCS #8)
        node_NN.key         SuperNode NN's private key (OpenSSH format, ECDSA P-384)
        node_NN.pub         its public key (OpenSSH format), registered with the SuperLink

The folder is made whole or not at all (written beside it, then renamed), so a rerun on a run folder
finds either every file or none, and reuses them: the same CA, server certificate and node keys. The
CA's private key signs the server certificate and is then thrown away, so no other certificate can
ever be signed in the run's name. A reused folder that others may read, or whose certificate expired,
is refused: its keys may have leaked, or TLS would fail.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lora_gpt.errors import FixableError

LOOPBACK = ("127.0.0.1", "localhost")
VALID_FOR = datetime.timedelta(days=365)
CURVE = ec.SECP384R1  # a NIST curve, as Flower's SuperNode authentication asks


class CredentialsError(FixableError):
    """A credentials folder that cannot be used: open to other users, incomplete, expired, or for other hosts."""


@dataclass(frozen=True)
class Credentials:
    """Where a federation's credentials lie; `ensure` makes or checks them."""

    folder: Path
    num_nodes: int

    @property
    def ca_certificate(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_certificate(self) -> Path:
        return self.folder / "superlink.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "superlink.key"

    def node_key(self, node: int) -> Path:
        return self.folder / f"node_{node:02d}.key"

    def node_public_key(self, node: int) -> Path:
        return self.folder / f"node_{node:02d}.pub"

    def superlink_flags(self) -> list[str]:
        """`flower-superlink`'s: serve TLS with this certificate; let in only SuperNodes whose keys are registered."""
        return [
            "--ssl-ca-certfile",
            str(self.ca_certificate),
            "--ssl-certfile",
            str(self.server_certificate),
            "--ssl-keyfile",
            str(self.server_key),
            "--enable-supernode-auth",
        ]

    def supernode_flags(self, node: int) -> list[str]:
        """`flower-supernode`'s for node `node`: trust the SuperLink's certificate only through this CA; sign
        with its own key."""
        return [
            "--root-certificates",
            str(self.ca_certificate),
            "--auth-supernode-private-key",
            str(self.node_key(node)),
        ]

    def files(self) -> list[Path]:
        nodes = [path for n in range(self.num_nodes) for path in (self.node_key(n), self.node_public_key(n))]
        return [self.ca_certificate, self.server_certificate, self.server_key, *nodes]


def ensure(folder: Path, num_nodes: int, hosts: Sequence[str] = LOOPBACK) -> Credentials:
    """The credentials in `folder` for `num_nodes` SuperNodes and a SuperLink reached as any of `hosts`:
    made if the folder does not exist, else checked and reused."""
    credentials = Credentials(Path(folder), num_nodes)
    if credentials.folder.exists():
        check(credentials, hosts)
        return credentials
    for unfinished in credentials.folder.parent.glob(f".{credentials.folder.name}.*"):
        shutil.rmtree(unfinished)  # what a launcher stopped while it wrote left
    staging = credentials.folder.with_name(f".{credentials.folder.name}.{os.getpid()}")
    staging.mkdir(mode=0o700, parents=True)
    os.chmod(staging, 0o700)  # whatever the umask
    try:
        write_all(Credentials(staging, num_nodes), hosts)
        staging.rename(credentials.folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return credentials


def write_all(credentials: Credentials, hosts: Sequence[str]) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collab-lora federation CA")])
    ca_certificate = (
        certificate_builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(CURVE())
    server_certificate = (
        certificate_builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), ca_name, server_key.public_key(), now
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([subject_name(h) for h in hosts]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    write_private(credentials.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM))
    write_private(credentials.server_certificate, server_certificate.public_bytes(serialization.Encoding.PEM))
    write_private(
        credentials.server_key,
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    for node in range(credentials.num_nodes):
        key = ec.generate_private_key(CURVE())
        write_private(
            credentials.node_key(node),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        write_private(
            credentials.node_public_key(node),
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        )


def certificate_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # machines whose clocks differ a little
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def subject_name(host: str) -> x509.GeneralName:
    """An IP address as an IP name (TLS clients match addresses only against those), else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_private(path: Path, data: bytes) -> None:
    """Write a new file that only its owner may read or write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(data)


def check(credentials: Credentials, hosts: Sequence[str]) -> None:
    """Refuse a folder to reuse that others may open, that misses a file, whose server certificate has
    expired, or that does not name every host."""
    fix = f"delete {credentials.folder} to make new credentials (nodes on other machines then need their new files)"
    for path in (credentials.folder, *credentials.folder.iterdir()):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CredentialsError(
                f"{path} is open to other users (mode {mode:04o}), so its keys may have leaked; {fix}."
            )
    missing = [p.name for p in credentials.files() if not p.is_file()]
    if missing:
        raise CredentialsError(f"{credentials.folder} lacks {', '.join(missing)}; {fix}.")
    certificate = x509.load_pem_x509_certificate(credentials.server_certificate.read_bytes())
    if certificate.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        raise CredentialsError(
            f"the SuperLink's certificate in {credentials.folder} expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d}; {fix}."
        )
    named = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    absent = [h for h in hosts if subject_name(h) not in named]
    if absent:
        raise CredentialsError(
            f"the SuperLink's certificate in {credentials.folder} does not name {', '.join(absent)}; {fix}."
        )
