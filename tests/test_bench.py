"""The benchmark harness works: --quick produces every row and leaves no
mount behind.  (It asserts the harness, never a speed.)"""

import json
import subprocess
import sys

from bench import podman, runtimes, systems, udba, workloads


def test_quick_bench_produces_every_row(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--runs", "1",
                           "--out", str(tmp_path), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "LATEST.json").read_text())
    rows = {(r["workload"], r["param"], r["system"]): r for r in data["results"]}
    for workload in workloads.all_workloads():
        for param in workload.quick_params:
            for system in systems.ALL:
                row = rows[(workload.name, workload.label(param), system.name)]
                assert row["error"] is None, row
                assert row["missing"] or len(row["times"]) == 1, row
    assert rows[("container start", "busybox true", "pycontainer")]["times"]
    for system in systems.ALL:
        for mounts in (1, 4):
            row = rows[("page cache", f"16 MiB through {mounts} mount(s)", system.name)]
            assert row["error"] is None and (row["missing"] or row["times"]), row
    assert len(rows[("memory per container", "3 running", "pycontainer")]["times"]) == 3
    assert rows[("memory per container", "3 running: their total / 3", "pycontainer")]["times"]
    assert len(rows[("container start", "run -d with 0 to 2 running", "pycontainer")]
               ["times"]) == 3
    udba_rows = {key: r for key, r in rows.items() if key[0].startswith("udba:")}
    assert {(workload, system) for workload, _, system in udba_rows} == {
        (udba.DELAY, udba.NOTIFY.name), (udba.DELAY, udba.REVAL.name),
        *((udba.COST, s.name) for s in (udba.NONE, udba.NOTIFY)),
        *((udba.FIND, s.name) for s in (udba.NONE, udba.REVAL, udba.NOTIFY))}
    assert all(r["error"] is None and r["times"] for r in udba_rows.values()), udba_rows
    for workload, case in ((podman.RUN, "busybox true"), (podman.MOUNT, "busybox lower")):
        for system in podman.PROGRAMS:
            row = rows[(workload, case, system)]
            assert row["error"] is None and (row["missing"] or row["times"]), row
    for workload, case in ((runtimes.UNDER_PODMAN, "busybox true"), (runtimes.EXEC, "true"),
                           (runtimes.ALONE, "busybox true")):
        for system in runtimes.RUNTIMES:
            row = rows[(workload, case, system)]
            # crun refuses a host whose cgroup v2 holds a controller (hybrid
            # mode, as here): its rows may say so, the others must measure.
            assert row["error"] is None or system == "crun", row
            assert row["missing"] or row["times"] or row["error"], row
    table = (tmp_path / "LATEST.md").read_text()
    assert table.count("| pyunion |") == sum(len(w.quick_params)  # and page cache, podman:
                                             for w in workloads.all_workloads()) + 2 + 2
    assert "kernel:" in table and "× overlayfs" in table
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()
