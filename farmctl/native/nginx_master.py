"""Start nginx's master: what supervisord runs as `nginx`.

    python -m farmctl.native.nginx_master -- nginx ARGS...

nginx's workers do not die with their master: one SIGKILLed (or killed by the OOM killer) leaves
them serving on its listening sockets, reparented to PID 1 and out of reach of any reload, and every
new master supervisord starts fails to bind ("Address already in use"). supervisord starts this only
once the previous master is gone, so any nginx process still in supervisord's session (see
`Supervisor.session`) is such an orphan: each gets SIGQUIT (it closes its listening sockets at once
and finishes the requests it has), a SIGKILL after ORPHAN_GRACE_S, and then nginx starts."""

import os
import signal
import sys

import psutil

from farmctl.native.supervisor import alive, terminate

#: As long as a request may take (the app answers within 1.5 s); no new connection is accepted meanwhile.
ORPHAN_GRACE_S = 1.5


def orphans() -> list[psutil.Process]:
    """The nginx processes of this session other than this one."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.pid != os.getpid() and proc.info["name"] == "nginx" and os.getsid(proc.pid) == os.getsid(0):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return [p for p in found if alive(p)]


def main(argv: list[str]) -> None:
    nginx = argv[1:] if argv[:1] == ["--"] else argv
    # The health loop may HUP "nginx" while this runs: a reload, not an end (nginx sets its own handler).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if stale := orphans():
        print(f"nginx_master: {len(stale)} nginx process(es) of a dead master hold the ports "
              f"(pids {', '.join(str(p.pid) for p in stale)}): SIGQUIT", flush=True)
        if killed := terminate(stale, signal.SIGQUIT, ORPHAN_GRACE_S):
            print(f"nginx_master: SIGKILLed {len(killed)} still busy after {ORPHAN_GRACE_S} s", flush=True)
    os.execv(nginx[0], nginx)


if __name__ == "__main__":
    main(sys.argv[1:])
