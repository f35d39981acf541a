"""What a test deployment needs: `fedmm flower app` (a Flower App folder for `flwr run`) and `fedmm flower certs`
(a certificate authority, the SuperLink's TLS certificate, and SuperNode authentication keys).

The certificates are for trying a deployment out: production sites use their organisation's CA. Keys are written
readable by their owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shlex
from pathlib import Path

from fedmm.errors import FedmmError
from fedmm.runtime.flower.env import FLOWER_VERSION

APP_TOML = """\
# A Flower App that runs fedmm (written by `fedmm flower app`). fedmm must be installed on the SuperLink's and every
# SuperNode's machine (pip install 'fedmm[flower]'); nothing is installed per run.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "fedmm federated fine-tuning"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedmm"

[tool.flwr.app.components]
serverapp = "fedmm.runtime.flower.app:server_app"
clientapp = "fedmm.runtime.flower.app:client_app"

[tool.flwr.app.config]
# fedmm overrides, as for `fedmm run` (runtime=flower is implied). Replace them for one run with --run-config;
# to continue a run after its last completed round:
#   flwr run . <superlink> --stream --run-config 'overrides="resume=/abs/run/dir"'
overrides = {overrides}
"""


def write_app(out: str | Path, overrides: list[str]) -> Path:
    """A Flower App folder for these overrides. The run directory is made absolute here, because the ServerApp
    process starts in the SuperLink's working directory."""
    from fedmm.config import load_settings

    out = Path(out)
    if (out / "pyproject.toml").exists():
        raise FedmmError(f"{out}/pyproject.toml exists; choose an empty folder for the Flower App")
    resuming = any(o.startswith("resume=") for o in overrides)
    if not resuming:  # a resumed run keeps its saved configuration, runtime included
        overrides = [o for o in overrides if not o.startswith("runtime=")] + ["runtime=flower"]
    if not resuming and not any(o.startswith("output_dir=") for o in overrides):
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        overrides.append(f"output_dir={Path('runs').resolve() / (stamp + '-flower')}")
    overrides = [
        f"{o.split('=', 1)[0]}={Path(o.split('=', 1)[1]).expanduser().resolve()}"
        if o.startswith(("output_dir=", "resume="))
        else o
        for o in overrides
    ]
    load_settings(overrides)  # check them now, not on the SuperLink
    out.mkdir(parents=True, exist_ok=True)
    joined = " ".join(shlex.quote(o) for o in overrides)
    (out / "pyproject.toml").write_text(APP_TOML.format(name="fedmm-job", overrides=_toml_string(joined)))
    return out


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_certificates(out: str | Path, hosts: list[str], supernodes: int, days: int = 365) -> list[Path]:
    """ca.crt/ca.key, server.pem/server.key (TLS for the SuperLink, valid for `hosts`), and supernode-<i>.key /
    supernode-<i>.pub (OpenSSH EC keys on NIST P-384, what `flwr supernode register` and
    `flower-supernode --auth-supernode-private-key` take)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise FedmmError(
            f"fedmm flower certs needs the cryptography package: pip install 'fedmm[flower]' "
            f"(flwr=={FLOWER_VERSION} brings it)"
        ) from None
    if not hosts:
        raise FedmmError("give at least one --host: the SuperLink's address as SuperNodes reach it")
    out = Path(out)
    if (out / "ca.key").exists():
        raise FedmmError(f"{out} already holds a certificate authority (ca.key); choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmm test deployment"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedmm test CA"))
        .issuer_name(name("fedmm test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    written = [out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key"]
    written[0].write_bytes(ca.public_bytes(pem))
    _private(written[1], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    written[2].write_bytes(cert.public_bytes(pem))
    _private(written[3], key.private_bytes(pem, serialization.PrivateFormat.PKCS8, plain))
    for i in range(supernodes):
        node = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"supernode-{i}.key", out / f"supernode-{i}.pub"
        _private(private, node.private_bytes(pem, serialization.PrivateFormat.OpenSSH, plain))
        public.write_bytes(
            node.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
        )
        written += [private, public]
    return written
