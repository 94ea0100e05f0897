"""A small conmon, for tests: a child subreaper that runs one runtime
command (``create``, or ``exec --detach``), then waits for the process
named in the pid file the command wrote, and writes its exit code (128+N
when signal N killed it, as conmon does) to EXIT_FILE.  If the command
fails, EXIT_FILE says ``failed N`` with its exit code.

    python oci_monitor.py EXIT_FILE PID_FILE RUNTIME ARGS...
"""

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    exit_file, pid_file, *command = sys.argv[1:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    code = subprocess.call(command)
    if code != 0:
        _write(exit_file, f"failed {code}")
        return
    with open(pid_file) as f:
        pid = int(f.read())
    while True:  # orphans of the container come here too: reap them all
        reaped, status = os.wait()
        if reaped == pid:
            code = os.waitstatus_to_exitcode(status)
            _write(exit_file, str(128 - code if code < 0 else code))
            return


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


if __name__ == "__main__":
    main()
