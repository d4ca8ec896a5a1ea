"""TLS for adx-mon's transfer front door: the node's own certificate (--tls-cert, --tls-key) when
it has one, otherwise a self-signed certificate made at start, as adx-mon's ingestor makes one
when it is given no --ca-cert/--key.

The self-signed certificate lives as long as the process: its key is made in memory (ECDSA P-256:
a millisecond, where an RSA key takes a tenth of a second or more), written to a private temporary
directory only for `ssl` to load it, and deleted at once. Its names (subject alternative names)
are the node's name, the host's name, localhost and the loopback addresses, and the listening
address when it is one, so that a client that pins it (takes it as its one trusted certificate)
can also check the host name. A collector that does not pin it needs insecure-skip-verify, as with
adx-mon's own made-up certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650
"""Ten years, as adx-mon's made-up certificate; it is remade at every start anyway."""


def self_signed(names: Iterable[str], common_name: str = "ingestor") -> tuple[bytes, bytes]:
    """A self-signed certificate and its key, both PEM, valid for `names` (host names or IP
    addresses; anything that is neither is left out)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if name and all(part.isascii() and part.replace("-", "").isalnum() for part in name.split(".")):
                alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "telemetry-ingestor"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "ingestor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))  # a client whose clock is a little behind
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_context(cert: Path | None, key: Path | None, names: Iterable[str] = ()) -> tuple[ssl.SSLContext, bool]:
    """The door's TLS context and whether its certificate was made up now (no `cert`/`key`).
    OSError or ssl.SSLError when the given files cannot be loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # adx-mon's client disables HTTP/2 for transfers
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
        return ctx, False
    names = list(names)
    cert_pem, key_pem = self_signed(names, common_name=names[0] if names else "ingestor")
    with tempfile.TemporaryDirectory(prefix="ingestor-tls-") as d:  # 0700; gone when loaded
        cert_path, key_path = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert_path.write_bytes(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx, True
