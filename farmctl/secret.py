"""The farm's CSRF secret: random, made once per state dir, so no farm runs on the app's public demo value."""

import secrets
from pathlib import Path


def csrf_secret(state_dir: Path) -> str:
    """The secret stored in `state_dir`, created on first use (readable by its owner only)."""
    path = state_dir / "csrf_secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()
