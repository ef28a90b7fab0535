"""Debug hook for bench/bench_soak.py --trace (not part of the gateway): with TG_TRACE_DUMP set, tracemalloc
runs from start-up and SIGUSR2 writes a snapshot to $TG_TRACE_DUMP.<pid>.<n> (compared by the bench)."""

import os

if os.environ.get("TG_TRACE_DUMP"):
    import signal
    import tracemalloc

    tracemalloc.start(int(os.environ.get("TG_TRACE_FRAMES", "8")))
    _n = [0]

    def _dump(signum, frame):  # type: ignore[no-untyped-def]
        import gc

        gc.collect()
        _n[0] += 1
        tracemalloc.take_snapshot().dump(f"{os.environ['TG_TRACE_DUMP']}.{os.getpid()}.{_n[0]}")

    signal.signal(signal.SIGUSR2, _dump)
