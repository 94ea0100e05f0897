"""Containers: how long ``pycontainer run --rm busybox true`` takes beside
``runc run`` and ``crun run`` (where installed) on the same busybox root;
how long a detached start takes while others run; and how much memory each
running container costs pycontainer (the PSS of its supervisor, its union
daemon and the two helper processes; the command's own memory not
counted), with 20 and with 100 running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from container import images

from .runner import Result

PYCONTAINER = str(Path(sys.executable).parent / "pycontainer")
START = "container start"
MEMORY = "memory per container"
WHAT = {START: "`pycontainer run --rm busybox true` beside `runc run` and `crun run`; "
               "`run -d` of each container while the ones started before it run",
        MEMORY: "PSS of pycontainer's own processes per running container; and of all of "
                "them, over their number"}


def measure(quick: bool, runs: int, warmups: int, workdir: Path, progress=print,
            runtimes: tuple[str, ...] = ("runc", "crun"),
            counts: tuple[int, ...] | None = None) -> list[Result]:
    """Starts beside each of ``runtimes``; memory with each of ``counts``
    containers running (by default 3 quick, else 20 and 100)."""
    rootfs = images.build_busybox()
    progress(f"{START} on pycontainer")
    # No network on either side: runc's bundle has an empty namespace too.
    results = [time_starts("pycontainer", lambda i: [PYCONTAINER, "run", "--rm", "--network",
                                                      "none", "busybox", "true"], runs, warmups)]
    bundle = None
    for runtime in runtimes:  # the same OCI bundle serves them all
        progress(f"{START} on {runtime}")
        if not shutil.which(runtime):
            results.append(Result(START, "busybox true", runtime,
                                  missing=f"{runtime} is not installed"))
            continue
        bundle = bundle or oci_bundle(workdir / "bundle", rootfs, runtime)
        results.append(time_starts(runtime, lambda i, runtime=runtime: [
            runtime, "run", "--bundle", str(bundle), f"bench-{uuid.uuid4().hex[:8]}"],
            runs, warmups))
    for count in counts or ((3,) if quick else (20, 100)):
        progress(f"{MEMORY} with {count} running")
        results += _many_running(count)
    return results


def time_starts(system: str, command, runs: int, warmups: int, workload: str = START,
                case: str = "busybox true") -> Result:
    """``command(i)`` run ``warmups + runs`` times, the last ``runs`` timed;
    the first failure ends it, its stderr recorded."""
    result = Result(workload, case, system)
    for i in range(warmups + runs):
        start = time.perf_counter()
        done = subprocess.run(command(i), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            result.error = done.stderr.strip()[:200]
            return result
        if i >= warmups:
            result.times.append(seconds)
    return result


def oci_bundle(bundle: Path, rootfs: str, runtime: str, args=("true",),
               readonly: bool = True) -> Path:
    """An OCI bundle made by ``RUNTIME spec``: ``args`` run on ``rootfs``,
    without a terminal; the rest is that runtime's defaults."""
    bundle.mkdir(parents=True)
    subprocess.run([runtime, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=list(args))
    config["root"] = {"path": rootfs, "readonly": readonly}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _many_running(count: int) -> list[Result]:
    """Start ``count`` detached containers one after another, then, while
    all of them run, take the memory of each, and of all of them together
    over ``count`` (PSS splits a shared page between its users, so the
    total counts it once)."""
    starts = Result(START, f"run -d with 0 to {count - 1} running", "pycontainer")
    each = Result(MEMORY, f"{count} running", "pycontainer", unit="B")
    together = Result(MEMORY, f"{count} running: their total / {count}", "pycontainer",
                      unit="B")
    names = []
    try:
        for _ in range(count):
            names.append(f"bench-{uuid.uuid4().hex[:8]}")
            start = time.perf_counter()
            subprocess.run([PYCONTAINER, "run", "-d", "--network", "none", "--name", names[-1],
                            "busybox", "sleep", "86400"],
                           capture_output=True, check=True)
            starts.times.append(time.perf_counter() - start)
        time.sleep(1)
        for name in names:
            state = json.loads(Path(f"/run/pycontainer/{name}/state.json").read_text())
            each.times.append(_pss_of_tree(state["supervisor_pid"], state["init_pid"]))
        together.times.append(sum(each.times) / count)
    except (subprocess.CalledProcessError, OSError) as exc:
        for result in (starts, each, together):
            result.error = str(exc)[:200]
    finally:
        # rm stops at a name it cannot remove: only the last may not have started.
        subprocess.run([PYCONTAINER, "rm", "-f", *names], capture_output=True)
    return [starts, each, together]


def _pss_of_tree(supervisor: int, init_pid: int) -> int:
    """PSS in bytes of the supervisor and its descendants down to the
    container's init (its command is the user's, not ours)."""
    total, todo = 0, [supervisor]
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        if pid != init_pid:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(child) for child in f.read().split()]
    return total
