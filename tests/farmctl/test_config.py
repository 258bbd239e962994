"""FarmConfig: read from the make variables, refusing what no farm can be, carried whole to another process."""

import pytest
from pydantic import ValidationError

from farmctl.config import FarmConfig
from farmctl.ports import on_free_ports


def test_from_env_reads_make_variables_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in {"N": "5", "HTTP_PORT": "9080", "REDIS": "sentinel", "SENTINEL_PORTS": "7001,7002,7003",
                            "DEMO_CONTROLS": "1", "BALANCE": "sticky", "HTTPS_PORT": "0"}.items():
        monkeypatch.setenv(variable, value)
    config = FarmConfig.from_env(balance="round_robin", http_port=None)
    assert (config.instances, config.http_port, config.redis_mode) == (5, 9080, "sentinel")
    assert config.sentinel_ports == (7001, 7002, 7003)
    assert config.demo_controls is True
    assert config.https_url is None
    assert config.balance == "round_robin"


def test_from_env_empty_variables_keep_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N", "")  # what make exports for a variable nobody set
    assert FarmConfig.from_env().instances == 3


@pytest.mark.parametrize("bad", [{"instances": 0}, {"balance": "random"}, {"session_backend": "disk"},
                                 {"redis_mode": "raft"}, {"sentinel_ports": (1, 2)}, {"cluster_ports": (1, 2, 3)}])
def test_config_refuses_what_no_farm_can_be(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FarmConfig(**bad)  # type: ignore[arg-type]


def test_from_json_same_config_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = on_free_ports(FarmConfig(instances=2, redis_mode="sentinel", https_port=0, extra_env={"A": "b"}))
    monkeypatch.setenv("HTTP_PORT", "1")
    assert FarmConfig.from_json(config.model_dump_json()) == config

