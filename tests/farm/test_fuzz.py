"""Property-based fuzzing of the whole API with schemathesis, from the app's own OpenAPI schema,
through the real balancer: no 5xx, and every answer as documented."""

import shutil
import subprocess
from pathlib import Path

import pytest

from app.config import SESSION_COOKIE
from tests.conftest import FarmFactory
from tests.farm.users import signed_in

pytestmark = pytest.mark.farm

CHECKS = ",".join(["not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_schema_conformance", "response_headers_conformance"])


def schemathesis(base_url: str, *extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("schemathesis", path=str(Path(__file__).resolve().parents[2] / ".venv" / "bin"))
    assert binary, "schemathesis is not installed in .venv"
    return subprocess.run(
        [binary, "run", f"{base_url}/openapi.json", "--url", base_url, "--checks", CHECKS,
         "--max-examples", "40", "--seed", "7", "--workers", "2", *extra],
        capture_output=True, text=True, cwd=cwd, timeout=300, check=False,
    )


def test_fuzzing_the_api_finds_no_5xx_and_no_undocumented_answer(farm_factory: FarmFactory,
                                                                  tmp_path: Path) -> None:
    farm = farm_factory(2)  # its own farm: fuzzed logins use up the throttle allowance
    base = farm.config.balancer_url
    anonymous = schemathesis(base, cwd=tmp_path)
    assert anonymous.returncode == 0, anonymous.stdout[-4000:]
    with signed_in(base) as client:
        cookie = f"Cookie: {SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}"
    # Signed in, the session-bound operations are reached too (logout excluded: it would end the session).
    signed = schemathesis(base, "-H", cookie, "--exclude-path-regex", "logout", cwd=tmp_path)
    assert signed.returncode == 0, signed.stdout[-4000:]
    assert "401 Unauthorized" not in signed.stdout
