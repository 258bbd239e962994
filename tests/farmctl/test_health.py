"""The health loop's decision (farmctl/health.py) on made-up probe histories; the loop itself is
tested against real farms in tests/farm/test_gray.py."""

from farmctl.health import FALL, Instance, Probe, decide


def instance(name: str, *probes: Probe) -> Instance:
    inst = Instance(name, f"http://{name}")
    for n, probe in enumerate(probes):
        inst.saw(probe, float(n))
    return inst


READY, UNREADY, TIMEOUT, REFUSED = Probe.READY, Probe.UNREADY, Probe.TIMEOUT, Probe.REFUSED


def test_an_instance_leaves_after_fall_bad_probes_and_returns_after_rise_good_ones() -> None:
    others = [instance("web1", READY, READY), instance("web3", READY, READY)]
    assert decide([instance("web2", READY, TIMEOUT), *others], {}) == {}
    assert decide([instance("web2", *[TIMEOUT] * FALL), *others], {}) == {"web2": "timeout"}
    assert decide([instance("web2", TIMEOUT, READY), *others], {"web2": "timeout"}) == {"web2": "timeout"}
    assert decide([instance("web2", READY, READY), *others], {"web2": "timeout"}) == {}


def test_a_refused_connection_changes_nothing() -> None:
    others = [instance("web1", READY, READY), instance("web3", READY, READY)]
    assert decide([instance("web2", READY, READY, REFUSED, REFUSED, REFUSED), *others], {}) == {}
    assert decide([instance("web2", TIMEOUT, TIMEOUT, REFUSED), *others], {}) == {"web2": "timeout"}


def test_one_instance_that_cannot_reach_the_store_leaves() -> None:
    fleet = [instance("web1", READY, READY), instance("web2", UNREADY, UNREADY), instance("web3", READY, READY)]
    assert decide(fleet, {}) == {"web2": "unready"}


def test_when_no_instance_reaches_the_store_every_one_stays_but_the_hung() -> None:
    fleet = [instance("web1", UNREADY, UNREADY), instance("web2", TIMEOUT, TIMEOUT),
             instance("web3", UNREADY, UNREADY)]
    assert decide(fleet, {"web1": "unready"}) == {"web2": "timeout"}


def test_never_every_instance() -> None:
    fleet = [instance(f"web{n}", TIMEOUT, TIMEOUT) for n in (1, 2, 3)]
    assert decide(fleet, {}) == {}


def test_a_timeout_starts_the_liveness_clock_and_any_answer_stops_it() -> None:
    inst = instance("web2", READY, TIMEOUT, TIMEOUT)
    assert inst.silent_since == 1.0
    inst.saw(UNREADY, 3.0)
    assert inst.silent_since is None


def test_one_slow_probe_elsewhere_does_not_bring_a_store_less_instance_back() -> None:
    fleet = [instance("web1", READY, TIMEOUT), instance("web2", UNREADY, UNREADY), instance("web3", READY, UNREADY)]
    assert decide(fleet, {"web2": "unready"}) == {"web2": "unready"}
