"""The HTTPS listener's certificate: self-signed for the demo, or your own (TLS_CERT and TLS_KEY)."""

import os
import shutil
import subprocess
from pathlib import Path

from farmctl.runtime import FarmError


def certificate_paths(state_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) as nginx reads them."""
    return state_dir / "tls" / "cert.pem", state_dir / "tls" / "key.pem"


def ensure_certificate(state_dir: Path) -> None:
    """Copy TLS_CERT/TLS_KEY into the state dir if set; else make a self-signed pair, once."""
    cert, key = certificate_paths(state_dir)
    cert.parent.mkdir(parents=True, exist_ok=True)
    own_cert, own_key = os.environ.get("TLS_CERT"), os.environ.get("TLS_KEY")
    if own_cert and own_key:
        shutil.copyfile(own_cert, cert)
        shutil.copyfile(own_key, key)
    if cert.exists() and key.exists():
        return
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FarmError("openssl is needed to make the demo's self-signed certificate (apt-get install openssl), "
                        "or set HTTPS_PORT=0")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    key.chmod(0o600)
