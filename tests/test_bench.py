"""The benchmark harness works: --quick produces every row and leaves no
mount behind; issue #16's table judges its targets from the figures.
(It asserts the harness, never a speed.)"""

import json
import subprocess
import sys

from bench import fastpaths, mountready, pagecache, podman, runtimes, systems, udba, workloads
from bench.runner import Result


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
    # and page cache, podman, mount until ready, and the head of issue #16's table
    assert table.count("| pyunion |") == sum(len(w.quick_params)
                                             for w in workloads.all_workloads()) + 2 + 2 + 1 + 1
    for system in systems.for_workload(mountready.NAME):
        row = rows[(mountready.NAME, mountready.CASE, system.name)]
        assert row["error"] is None and (row["missing"] or row["times"]), row
    assert [line["workload"] for line in data["summary"]] == [
        f"{row.label} [{row.case}]" for row in fastpaths.rows(quick=True)]
    assert "kernel:" in table and "× overlayfs" in table
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()


def test_quick_fastpaths_table_has_every_row_and_a_verdict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--runs", "1",
                           "--only", "fastpaths", "--out", str(tmp_path),
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "LATEST.json").read_text())["summary"]
    assert [line["workload"] for line in summary] == [
        f"{row.label} [{row.case}]" for row in fastpaths.rows(quick=True)]
    for line in summary:
        assert line["verdict"].startswith(("met (", "**missed** (")), line
    by_label = {line["workload"].split(" [")[0]: line for line in summary}
    warm = by_label["seq read 1 GiB warm (MiB/s)"]
    assert "pagecache=drop: " in warm["pyunion"] and "pagecache=direct: " in warm["verdict"]
    mounting = by_label["mount until ready"]
    assert mounting["native"] != "not measured" and "as mount program: " in mounting["verdict"]
    assert by_label["`pycontainer run --rm busybox true` (native: runc)"][
        "native"].startswith("runc: ")
    assert "| workload | native | overlayfs | fuse-overlayfs | pyunion | target | verdict |" in (
        done.stdout)
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()


def _result(workload, case, system, seconds, error=None):
    return Result(workload, case, system, times=[seconds], error=error)


def test_verdicts_follow_the_figures():
    """Met within the target, missed past it, by the default pyunion or
    by every or any variant as the row says, with the ratios it rests on."""
    rows = {row.label: row for row in fastpaths.rows(quick=True)}
    listing = rows["listdir of a 10k-entry dir, warm"]
    figures = [_result(listing.workload, listing.case, "native", 0.010),
               _result(listing.workload, listing.case, "overlayfs", 0.011),
               _result(listing.workload, listing.case, "pyunion", 0.015),
               _result(listing.workload, listing.case, "pyunion passthrough=off", 0.030)]
    [line] = fastpaths.table(figures, quick=True)
    assert line["fuse-overlayfs"] == "not measured"
    assert line["pyunion"] == "15.00 ms; passthrough=off: 30.00 ms"
    assert line["verdict"] == "met (1.50× native; passthrough=off: 3.00× native)"
    [line] = fastpaths.table(figures[:2] + figures[3:], quick=True)
    assert line["verdict"] == "not measured"  # the default pyunion decides
    figures[2] = _result(listing.workload, listing.case, "pyunion", 0.025)
    [line] = fastpaths.table(figures[:3], quick=True)
    assert line["verdict"] == "**missed** (2.50× native)"

    read = rows["seq read 1 GiB warm (MiB/s)"]  # a speed, in every page-cache mode
    [line] = fastpaths.table([_result(read.workload, read.case, "native", 1.0),
                              _result(read.workload, read.case, "pyunion", 1.0),
                              _result(read.workload, read.case, "pyunion pagecache=drop", 1.25)],
                             quick=True)
    assert line["verdict"] == "**missed** (1.00× native; pagecache=drop: 0.80× native)"

    sharing = rows["page cache after 1 GiB through 4 mounts (× the file size); MAP_SHARED"]
    size = pagecache.file_size(quick=True)
    mapped = next(w for w in workloads.all_workloads() if w.name == "sequential read, shared map")
    mapped = (mapped.name, mapped.label(mapped.quick_params[0]))
    figures = [_result(read.workload, read.case, "native", 1.0),
               _result(read.workload, read.case, "pyunion", 1.0),
               _result(read.workload, read.case, "pyunion pagecache=direct", 1.0),
               _result(sharing.workload, sharing.case, "pyunion", 5 * size),
               _result(sharing.workload, sharing.case, "pyunion pagecache=direct", size),
               _result(*mapped, "pyunion", 0.1),
               _result(*mapped, "pyunion pagecache=direct", 0.1, error="OSError: ENODEV")]
    [line] = [line for line in fastpaths.table(figures, quick=True)
              if line["workload"].startswith("page cache")]
    assert line["pyunion"] == ("5.0×, MAP_SHARED works; "
                               "pagecache=direct: 1.0×, MAP_SHARED fails")
    assert line["verdict"].startswith("**missed** ("), line  # neither mode has all three
    figures[-1] = _result(*mapped, "pyunion pagecache=direct", 0.1)
    [line] = [line for line in fastpaths.table(figures, quick=True)
              if line["workload"].startswith("page cache")]
    assert line["verdict"] == ("met (5.0× the file; "
                               "pagecache=direct: 1.0×, maps, 1.00× native)"), line

    mounting = rows["mount until ready"]
    [line] = fastpaths.table([_result(mounting.workload, mounting.case, "pyunion", 0.010)],
                             quick=True)
    assert line["verdict"] == "met (0.50× 20 ms)"
    [line] = fastpaths.table([_result(mounting.workload, mounting.case, "pyunion", 0.010,
                                      error="RuntimeError: no")], quick=True)
    assert (line["pyunion"], line["verdict"]) == ("failed", "not measured")
