"""Reading wrk's report: the figures the bench's ratios are made of."""

import pytest

from bench.wrk import WrkError, parse

REPORT = """Running 1s test @ http://127.0.0.1:27123/api/me
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.05ms    6.52ms  67.24ms   91.19%
    Req/Sec     2.73k   595.48     3.42k    50.00%
  Latency Distribution
     50%  476.00us
     75%    6.18ms
     90%   11.96ms
     99%    1.20s
  2716 requests in 1.00s, 469.61KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:   2709.14
Transfer/sec:    468.43KB
"""


def test_parse_reads_throughput_percentiles_and_errors() -> None:
    result = parse(REPORT)
    assert result.requests == 2716
    assert result.seconds == pytest.approx(1.0)
    assert result.rps == pytest.approx(2709.14)
    assert result.p50_ms == pytest.approx(0.476)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.non_2xx == 12
    assert result.socket_errors == 3


def test_parse_clean_report_has_no_errors() -> None:
    clean = "\n".join(line for line in REPORT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    result = parse(clean)
    assert (result.non_2xx, result.socket_errors) == (0, 0)


def test_parse_without_latency_distribution_fails() -> None:
    with pytest.raises(WrkError, match="50%"):
        parse(REPORT.replace("     50%  476.00us\n", ""))
