"""Container networks, for real, inside the stand-in host's network
namespace (conftest.py): bridges, veths, addresses, routes, published
ports, isolation, and the clean-up the pyc fixture checks after each test."""

import ipaddress
import json
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyroute2 import IPRoute

from conftest import IN_TEST_HOST, PYCONTAINER, stand_in_netns
from container.ports import PortProxy, Published

DEFAULT_SUBNET = ipaddress.IPv4Network("10.213.0.0/24")
ECHO_SERVER = ("nc", "-ll", "-p", "5000", "-e", "/bin/cat")


def address_of(pyc, name: str) -> str:
    return json.loads(pyc("inspect", name, check=True).stdout)["network"]["address"]


def start_echo_server(pyc, *options: str) -> tuple[str, str]:
    """A detached container echoing TCP on port 5000, once it listens;
    (name, address)."""
    name = pyc.name()
    pyc("run", "-d", "--name", name, *options, "busybox", *ECHO_SERVER, check=True)
    deadline = time.monotonic() + 10
    while ":5000 " not in pyc("exec", name, "netstat", "-ltn", check=True).stdout:
        assert time.monotonic() < deadline, "the echo server did not start listening"
        time.sleep(0.05)
    return name, address_of(pyc, name)


def in_host(*command: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*IN_TEST_HOST, *command], input=stdin, capture_output=True,
                          text=True, timeout=30)


def network_name(pyc) -> str:
    name = f"n{uuid.uuid4().hex[:8]}"
    pyc.networks.append(name)
    return name


@pytest.fixture
def nets(pyc):
    """Networks a test makes; removed after it with their containers
    (before pyc's leftover check)."""
    pyc.networks = []
    yield pyc
    for name in pyc.names:
        pyc("rm", "-f", name)
    for name in pyc.networks:
        assert pyc("network", "rm", name).returncode == 0


def test_a_container_gets_eth0_an_address_and_a_default_route(pyc):
    done = pyc("run", "--rm", "busybox", "sh", "-c", "ip -4 addr show eth0; ip route; "
               "ip link show lo; cat /etc/hosts", check=True)
    address = ipaddress.IPv4Interface(done.stdout.split("inet ")[1].split()[0])
    assert address.network == DEFAULT_SUBNET and address.ip != DEFAULT_SUBNET[1]
    assert f"default via {DEFAULT_SUBNET[1]} dev eth0" in done.stdout
    assert "LOWER_UP" in done.stdout.split("lo:")[1]
    assert f"{address.ip}\t" in done.stdout  # its name and hostname, in /etc/hosts


def test_two_containers_talk_tcp_and_ping_over_the_bridge(pyc):
    _, server = start_echo_server(pyc)
    done = pyc("run", "--rm", "busybox", "sh", "-c",
               f"ping -c 1 -W 2 {server} >/dev/null && echo hello | nc -w 2 {server} 5000")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n"


def test_the_host_reaches_a_container_and_a_container_the_host(pyc):
    _, server = start_echo_server(pyc)
    assert in_host("busybox", "nc", "-w", "2", server, "5000", stdin="from the host\n").stdout \
        == "from the host\n"
    gateway = str(DEFAULT_SUBNET[1])
    assert pyc("run", "--rm", "busybox", "ping", "-c", "1", "-W", "2", gateway).returncode == 0


def test_a_published_port_answers_on_the_hosts_loopback(pyc):
    name, _ = start_echo_server(pyc, "-p", "18080:5000")
    done = in_host("busybox", "nc", "-w", "2", "127.0.0.1", "18080", stdin="published\n")
    assert done.stdout == "published\n", done.stderr
    taken = pyc("run", "--rm", "-p", "18080:5000", "busybox", "true")
    assert taken.returncode == 125
    assert taken.stderr.strip().splitlines() == ["Error: -p: cannot use tcp port 18080: "
                                                 "Address already in use"]
    pyc("rm", "-f", name, check=True)
    refused = in_host("busybox", "nc", "-w", "2", "127.0.0.1", "18080", stdin="x\n")
    assert refused.stdout == ""  # the proxy went with the container


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_the_port_proxy_relays_both_protocols(protocol):
    """The proxy itself, between two loopback ports of this test process."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    echo = socket.socket(socket.AF_INET, kind)
    echo.bind(("127.0.0.1", 0))
    target_port = echo.getsockname()[1]

    if protocol == "tcp":
        echo.listen(1)

    def serve():
        if protocol == "tcp":
            conn, _ = echo.accept()
            conn.sendall(conn.recv(100).upper())
            conn.close()
        else:
            data, peer = echo.recvfrom(100)
            echo.sendto(data.upper(), peer)

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:  # a free port for the proxy
        probe.bind(("127.0.0.1", 0))
        proxy_port = probe.getsockname()[1]
    proxy = PortProxy((Published(proxy_port, target_port, protocol),), "127.0.0.1")
    try:
        client = socket.socket(socket.AF_INET, kind)
        client.settimeout(5)
        client.connect(("127.0.0.1", proxy_port))
        client.send(b"relayed")
        assert client.recv(100) == b"RELAYED"
        client.close()
    finally:
        proxy.close()
        echo.close()


def test_networks_are_isolated_from_each_other_and_from_none(nets):
    pyc = nets
    first, second = network_name(pyc), network_name(pyc)
    assert pyc("network", "create", first, "--subnet", "10.214.1.0/24").returncode == 0
    assert pyc("network", "create", second, "--subnet", "10.214.2.0/24").returncode == 0
    _, server = start_echo_server(pyc, "--network", first, "--ip", "10.214.1.50")
    assert server == "10.214.1.50"
    same = pyc("run", "--rm", "--network", first, "busybox", "sh", "-c",
               f"echo near | nc -w 2 {server} 5000")
    assert same.stdout == "near\n"
    other = pyc("run", "--rm", "--network", second, "busybox", "sh", "-c",
                f"echo far | nc -w 2 {server} 5000; ping -c 1 -W 1 {server}")
    assert "far" not in other.stdout and other.returncode != 0
    none = pyc("run", "--rm", "--network", "none", "busybox", "sh", "-c",
               f"ls /sys/class/net; echo x | nc -w 1 {server} 5000")
    assert none.stdout.split() == ["lo"] and none.returncode != 0
    listed = pyc("network", "ls", check=True).stdout
    assert first in listed and "10.214.2.0/24" in listed
    in_use = pyc("network", "rm", first)
    assert in_use.returncode == 125 and "in use" in in_use.stderr


def test_forty_containers_at_once_get_distinct_addresses(pyc):
    names = [pyc.name() for _ in range(40)]

    def cli(*args):
        return subprocess.run([*PYCONTAINER, *args], capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(40) as pool:
        started = list(pool.map(lambda n: cli("run", "-d", "--name", n, "busybox", "sleep",
                                              "600"), names))
        assert [d.returncode for d in started] == [0] * 40, [d.stderr for d in started]
        seen = list(pool.map(lambda n: cli("exec", n, "ip", "-4", "-o", "addr", "show", "eth0"),
                             names))
        addresses = [d.stdout.split()[3].split("/")[0] for d in seen]
        assert addresses == [address_of(pyc, n) for n in names]  # what each was leased
        assert len(set(addresses)) == 40
        removed = list(pool.map(lambda n: cli("rm", "-f", n), names))
    assert [d.returncode for d in removed] == [0] * 40
    # pyc checks after the test: no veth, lease or bridge is left


def test_dns_option_and_hostname_land_in_etc(pyc):
    done = pyc("run", "--rm", "-h", "box", "--dns", "10.0.0.53", "--dns", "10.0.0.54",
               "busybox", "sh", "-c", "cat /etc/resolv.conf; grep box /etc/hosts", check=True)
    assert done.stdout.startswith("nameserver 10.0.0.53\nnameserver 10.0.0.54\n")
    assert done.stdout.splitlines()[-1].split()[1] == "box"


@pytest.mark.parametrize("args, message", [
    (["network", "create", "x1", "--subnet", "10.300.0.0/24"], "bad subnet '10.300.0.0/24'"),
    (["network", "create", "x1", "--subnet", "8.8.8.0/24"], "not a private range"),
    (["network", "create", "x1", "--subnet", "10.213.0.128/25"], "overlaps network bridge"),
    (["network", "create", "bad name", "--subnet", "10.215.0.0/24"], "bad network name"),
    (["network", "rm", "bridge"], "built in"),
    (["network", "rm", "nosuch"], "no such network: nosuch"),
    (["run", "--rm", "--ip", "10.99.0.5", "busybox", "true"], "not a host address of"),
    (["run", "--rm", "--ip", "10.213.0.1", "busybox", "true"], "is the gateway"),
    (["run", "--rm", "--network", "none", "-p", "1:2", "busybox", "true"], "-p needs a network"),
    (["run", "--rm", "-p", "80", "busybox", "true"], "is not HOSTPORT:CONTAINERPORT"),
    (["run", "--rm", "-p", "70000:80", "busybox", "true"], "out of range"),
    (["run", "--rm", "--dns", "nameserver", "busybox", "true"], "not an IP address"),
])
def test_bad_network_input_is_refused_in_one_line(pyc, args, message):
    done = pyc(*args)
    assert done.returncode == 125
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_an_address_in_use_is_refused(pyc):
    _, server = start_echo_server(pyc)
    done = pyc("run", "--rm", "--ip", server, "busybox", "true")
    assert done.returncode == 125 and f"address {server} is in use" in done.stderr


def test_a_subnet_the_host_routes_already_is_refused(pyc):
    with IPRoute(netns=stand_in_netns()) as ip:
        ip.link("add", ifname="elsewhere", kind="bridge")
        index = ip.link_lookup(ifname="elsewhere")[0]
        try:
            ip.addr("add", index=index, address="10.216.0.1", prefixlen=24)
            ip.link("set", index=index, state="up")
            done = pyc("network", "create", "x2", "--subnet", "10.216.0.0/16")
        finally:
            ip.link("del", index=index)
    assert done.returncode == 125
    assert done.stderr.strip() == ("Error: subnet 10.216.0.0/16 overlaps the host's route to "
                                   "10.216.0.0/24")
