"""Threads of the supervisor that never take its signals.

Signals go to the main thread, whose handlers must run at once: a signal
the kernel hands to another thread waits for the main thread's next
bytecode, which a ``waitpid`` blocked on the container may not reach for
as long as the container runs.  A thread started here blocks every signal
(and so do the threads it starts).
"""

from __future__ import annotations

import signal
import threading


def start(target, *args, name: str | None = None) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread that takes no signals."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return thread
