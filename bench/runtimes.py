"""pycontainer-runtime beside runc and crun (where each is installed and
runs here), as podman's OCI runtime: ``podman --runtime PATH run --rm
busybox true`` and ``exec`` into a running container, one throwaway
podman each (bench/podman_env.py) on the kernel's overlay storage; and
each runtime alone, ``RUNTIME run --bundle`` of the same ``runc spec``
bundle on a copy of the busybox root, its state under our work directory:
the start-up cost of the runtime itself, without podman and conmon.

Podman keeps no runtime state of its own: it calls each runtime with its
default ``--root`` (``/run/runc``, ``/run/pycontainer-runtime``), and the
runtime removes a container's entry when podman deletes it.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

from container import images

from .containers import oci_bundle, time_starts
from .podman import RUN_TRUE, last_line, time_commands
from .podman_env import PODMAN, Podman, PodmanError, busybox_tar
from .runner import Result

UNDER_PODMAN = "runtime under podman"
EXEC = "runtime under podman: exec"
ALONE = "runtime alone"
WHAT = {UNDER_PODMAN: "`podman --runtime RUNTIME run --rm --network none busybox true`, "
                      "the same podman on the kernel's overlay storage",
        EXEC: "`podman --runtime RUNTIME exec C true` into a running busybox container C",
        ALONE: "`RUNTIME run --bundle B ID` of a `runc spec` bundle running `true` on a copy "
               "of the busybox root, no terminal: the runtime's own start-up and teardown"}

#: system name -> the runtime's executable ("" when it is not installed)
RUNTIMES = {"pycontainer-runtime": str(Path(sys.executable).parent / "pycontainer-runtime"),
            "runc": shutil.which("runc") or "", "crun": shutil.which("crun") or ""}


def measure(runs: int, warmups: int, workdir: Path, progress=print) -> list[Result]:
    context = workdir / "runtimes"
    context.mkdir()
    results = []
    tar = busybox_tar(context) if PODMAN else None
    for system, runtime in RUNTIMES.items():
        progress(f"{UNDER_PODMAN} on {system}")
        run = Result(UNDER_PODMAN, "busybox true", system, missing=_missing(system, runtime)
                     or (None if PODMAN else "podman is not installed"))
        into = Result(EXEC, "true", system, missing=run.missing)
        if run.missing is None:
            _under_podman(runtime, tar, runs, warmups, run, into)
        results += [run, into]
    rootfs = context / "rootfs"
    shutil.copytree(images.build_busybox(), rootfs, symlinks=True)
    bundle = oci_bundle(context / "bundle", str(rootfs), RUNTIMES["runc"]
                        or RUNTIMES["pycontainer-runtime"])
    for system, runtime in RUNTIMES.items():
        progress(f"{ALONE} on {system}")
        if not runtime:
            results.append(Result(ALONE, "busybox true", system,
                                  missing=_missing(system, runtime)))
            continue
        state = context / "state" / system
        results.append(time_starts(system, lambda i, runtime=runtime, state=state: [
            runtime, "--root", str(state), "run", "--bundle", str(bundle),
            f"bench-{uuid.uuid4().hex[:8]}"], runs, warmups, workload=ALONE))
    shutil.rmtree(context)
    return results


def _missing(system: str, runtime: str) -> str | None:
    return None if runtime else f"{system} is not installed"


def _under_podman(runtime: str, tar: Path, runs: int, warmups: int, run: Result,
                  into: Result) -> None:
    """``run --rm`` timed, then ``exec`` into a container left running,
    in one throwaway podman."""
    podman = Podman(None)
    flag = ("--runtime", runtime)
    failing = run
    try:
        podman.copying("import", str(tar), "localhost/busybox")
        time_commands(podman, (*flag, *RUN_TRUE), runs, warmups, run)
        failing = into
        podman(*flag, "run", "-d", "--name", "bench", "--network", "none", "localhost/busybox",
               "sleep", "600")
        time_commands(podman, (*flag, "exec", "bench", "true"), runs, warmups, into)
    except PodmanError as exc:  # recorded in the report, the run goes on
        failing.error = last_line(exc)
        if failing is run:
            into.error = "run failed first"
    finally:
        podman.tear_down()
