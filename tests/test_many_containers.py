"""A hundred containers on one image: started at once on the default
network, all running together, then stopped and removed with nothing left
behind (mounts, cgroups, leases, veths, state and data directories, PID
records, and every process each one had)."""

import os
from concurrent.futures import ThreadPoolExecutor

from conftest import leftovers
from container import runtime
from unionfs import daemon

COUNT = 100
NAME = object()  # stands for each container's name in a command


def processes_of(state: runtime.State) -> dict[int, int | None]:
    """Every process of a running container, with its start time: the
    supervisor and all below it (union daemon, helper, init, command)."""
    found, todo = {}, [state.supervisor_pid, state.daemon_pid]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = runtime.start_time(pid)
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(child) for child in f.read().split()]
    return found


def test_a_hundred_containers_start_run_and_stop_leaving_nothing(pyc):
    names = [pyc.name() for _ in range(COUNT)]
    with ThreadPoolExecutor(COUNT) as pool:
        def on_each(*command) -> list[str]:
            done = list(pool.map(lambda name: pyc(*(name if a is NAME else a for a in command),
                                                  timeout=600), names))
            assert [d.returncode for d in done] == [0] * COUNT, [d.stderr for d in done]
            return [d.stdout for d in done]

        on_each("run", "-d", "--name", NAME, "busybox", "sleep", "86400")
        listed = [line.split() for line in pyc("ps", check=True).stdout.splitlines()]
        assert sorted(fields[0] for fields in listed  # others' containers may show too
                      if fields[:1] and fields[0] in names and fields[1] == "running"
                      ) == sorted(names)
        states = [runtime.State.load(name) for name in names]
        inside = on_each("exec", NAME, "ip", "-4", "-o", "addr", "show", "eth0")
        addresses = [shown.split()[3].split("/")[0] for shown in inside]
        assert addresses == [state.network.address for state in states]  # as leased
        assert len(set(addresses)) == COUNT
        processes = {}
        for state in states:
            tree = processes_of(state)
            assert {state.supervisor_pid, state.daemon_pid, state.init_pid} <= tree.keys()
            processes.update(tree)
        on_each("stop", NAME)
    removed = pyc("rm", *names, timeout=600)
    assert removed.returncode == 0, removed.stderr

    assert leftovers(names) == ([], [], [], [])
    assert [pid for pid, start in processes.items() if runtime.start_time(pid) == start] == []
    for state in states:
        assert not os.path.exists(state.state_dir)
        assert not os.path.exists(state.data_dir)
        assert not os.path.exists(daemon.pidfile_path(state.rootfs))
        assert not os.path.exists(daemon.control_path(state.rootfs))
    listed = pyc("ps", "-a", check=True).stdout
    assert not any(name in listed for name in names)
