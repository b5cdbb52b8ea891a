"""Run a module under cProfile timed by the CPU time of the thread running it.

    python benchmarks/cpu_profile.py OUT -m MODULE [ARGS...]

The default timer of cProfile is the wall clock, so a server's profile is
mostly the time its event loop spent waiting, and a coroutine is charged for
whatever other tasks ran while it awaited.  ``time.thread_time`` counts only
the CPU of the profiled (event-loop) thread, which is what the benchmarks'
CPU-per-request figures measure.  The statistics are written to ``OUT`` when
the process exits (a node exits on SIGTERM).

On Python 3.11 (the version the benchmarks are run on here) cProfile sees the
thread that enabled it only.  From 3.12 it is built on ``sys.monitoring`` and
sees every thread, whose calls would then be timed by the wrong thread's clock:
read such a profile for the event-loop thread's functions only.
"""

from __future__ import annotations

import atexit
import cProfile
import runpy
import sys
import time


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    out, module = sys.argv[1], sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    profiler = cProfile.Profile(time.thread_time)

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(out)

    atexit.register(dump)
    profiler.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
