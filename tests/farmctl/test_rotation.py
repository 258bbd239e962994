"""The native rotation file: the health loop and `farmctl roll` write it under a lock; readers
(out_of_rotation, status, the tests' polls) take none, so a write must never show them a half file."""

import threading
from pathlib import Path

from farmctl.native import rotation


def test_a_reader_never_sees_a_write_half_done(tmp_path: Path) -> None:
    done = threading.Event()

    def flap() -> None:  # the health loop taking web2 out and putting it back, as fast as it can
        while not done.is_set():
            with rotation.editing(tmp_path) as current:
                if current.out:
                    current.out.clear()
                else:
                    current.out["web2"] = "unready"

    writer = threading.Thread(target=flap)
    writer.start()
    try:
        seen = {frozenset(rotation.read(tmp_path).out.items()) for _ in range(20_000)}
    finally:
        done.set()
        writer.join()
    assert seen <= {frozenset(), frozenset({("web2", "unready")})}
    assert len(seen) == 2  # the reads did overlap the writes
