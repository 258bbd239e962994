"""Settings: public demo defaults are refused outside ENVIRONMENT=demo."""

import pytest
from pydantic import ValidationError

from app.config import DEMO_CSRF_SECRET, DEMO_USERNAME, Environment, Settings


@pytest.mark.parametrize("secret", [None, DEMO_CSRF_SECRET, "too-short-for-production"])
def test_production_refuses_a_missing_demo_or_short_csrf_secret(secret: str | None) -> None:
    with pytest.raises(ValidationError, match="CSRF_SECRET"):
        Settings.model_validate({"environment": "production", **({"csrf_secret": secret} if secret else {})})


def test_production_creates_no_demo_account_and_no_crash_button() -> None:
    settings = Settings(environment=Environment.PRODUCTION, csrf_secret="x" * 32, demo_controls=True)
    assert settings.demo_user is None
    assert settings.demo_controls is False


def test_demo_keeps_its_public_defaults() -> None:
    settings = Settings(environment=Environment.DEMO)
    assert (settings.demo_user, settings.csrf_secret) == (DEMO_USERNAME, DEMO_CSRF_SECRET)
