"""The farm's own secrets, random and made once per state dir, so no farm runs on a public value:
the CSRF secret of its instances, and the proxy secret nginx shows them (see app.middleware)."""

import secrets
from pathlib import Path

from app.config import PROXY_HEADER


def farm_secret(state_dir: Path, name: str) -> str:
    """The secret `name` stored in `state_dir`, created on first use (readable by its owner only)."""
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def csrf_secret(state_dir: Path) -> str:
    return farm_secret(state_dir, "csrf_secret")


def proxy_secret(state_dir: Path) -> str:
    return farm_secret(state_dir, "proxy_secret")


def proxy_secret_conf(secret: str) -> str:
    """The nginx directive the balancer's config includes (kept out of the config itself, which is
    committed for Kubernetes and printed by tests)."""
    if not secret or not secret.replace("-", "").replace("_", "").isalnum():
        raise ValueError("the proxy secret must be non-empty, of A-Z a-z 0-9 - _ (e.g. `openssl rand -hex 32`)")
    return f'proxy_set_header {PROXY_HEADER} "{secret}";\n'
