"""docker-style option values into a container spec (no system touched)."""

import os

import pytest

from container import spec as s
from container.ports import PortError, Published, parse_publish


@pytest.mark.parametrize("text, size", [
    ("1024", 1024), ("256m", 256 << 20), ("256M", 256 << 20), ("1g", 1 << 30),
    ("1.5g", 3 << 29), ("512kb", 512 << 10), ("2GiB", 2 << 30), ("7b", 7),
])
def test_sizes_parse_like_docker(text, size):
    assert s.parse_size(text, "--memory") == size


@pytest.mark.parametrize("call, text, message", [
    (s.parse_memory, "1x", "invalid size '1x'"),
    (s.parse_memory, "", "invalid size"),
    (s.parse_memory, "-5m", "invalid size"),
    (s.parse_memory, "1m", "below the minimum"),
    (s.parse_memory, "100000000t", "too big"),
    (s.parse_memory, "8192p", "too big"),
    (s.parse_memory, "9" * 400, "too big"),
    (s.parse_cpus, "lots", "invalid number"),
    (s.parse_cpus, "0", "outside"),
    (s.parse_cpus, "999", "outside"),
    (s.parse_cpu_shares, "1", "outside 2..262144"),
    (s.parse_cpu_shares, "x", "invalid number"),
    (s.parse_cpuset, "0-", "invalid list"),
    (s.parse_cpuset, "a", "invalid list"),
    (s.parse_cpuset, "1-0", "is not among"),
    (s.parse_cpuset, "64", "is not among"),
    (s.parse_pids_limit, "many", "invalid number"),
    (s.parse_user, "root", "must be UID"),
    (s.parse_user, "1:x", "must be UID"),
    (s.parse_user, "99999999999", "^--user: .* out of range"),
    (s.parse_user, "0:2147483648", "^--user: .* out of range"),
    (s.parse_env, "1X=y", "invalid variable name"),
    (s.parse_env, "SURELY_NOT_SET_ANYWHERE", "is not set here"),
    (s.check_name, "-bad", "invalid name"),
    (s.check_name, "a/b", "invalid name"),
    (s.check_hostname, "bad_host", "invalid host name"),
    (s.check_workdir, "relative", "must be an absolute path"),
])
def test_bad_values_get_one_line_errors(call, text, message):
    with pytest.raises(s.SpecError, match=message) as caught:
        call(text)
    assert "\n" not in str(caught.value)


def test_storage_opts():
    assert s.parse_storage_opts([]) is None
    assert s.parse_storage_opts(["size=10m"]) == 10 << 20
    assert s.parse_storage_opts(["size=1g", "size=1.5G"]) == 3 << 29  # the last one counts
    for options, message in ((["size=lots"], "^--storage-opt size: invalid size 'lots'"),
                             (["size=0"], "^--storage-opt size: '0' must be more than 0$"),
                             (["size=100000000t"], "^--storage-opt size: .* too big"),
                             (["size"], "^--storage-opt: 'size' is not supported"),
                             (["quota=1g"], r"^--storage-opt: 'quota=1g' is not supported \(only")):
        with pytest.raises(s.SpecError, match=message):
            s.parse_storage_opts(options)


def test_memory_swap():
    assert s.parse_memory_swap("-1", 64 << 20) == -1
    assert s.parse_memory_swap("128m", 64 << 20) == 128 << 20
    with pytest.raises(s.SpecError, match="less than --memory"):
        s.parse_memory_swap("32m", 64 << 20)
    with pytest.raises(s.SpecError, match="needs --memory"):
        s.parse_memory_swap("32m", None)


def test_users_pids_cpus():
    assert s.parse_user("1000") == s.User(1000, 1000)
    assert s.parse_user("1000:50") == s.User(1000, 50)
    assert s.parse_user("2147483647") == s.User(2147483647, 2147483647)
    assert s.parse_pids_limit("100") == 100
    assert s.parse_pids_limit("-1") is None
    assert s.parse_cpus("0.5") == 0.5
    assert s.parse_memory("8191p") == 8191 << 50
    assert s.parse_cpuset("0") == "0"


def test_volumes(tmp_path):
    volume = s.parse_volume(f"{tmp_path}:/data:ro")
    assert volume == s.BindMount(str(tmp_path), "/data", True)
    assert s.parse_volume(f"{tmp_path}:/x").read_only is False
    assert s.parse_volume(f"{tmp_path}:/proc2/").target == "/proc2"
    for bad, message in ((f"{tmp_path}", "must be HOST:CONTAINER"),
                         (f"{tmp_path}:/x:rx", "unknown mode"),
                         ("relative:/x", "existing absolute path"),
                         (f"{tmp_path}/missing:/x", "existing absolute path"),
                         (f"{tmp_path}:x", "must be absolute"),
                         (f"{tmp_path}:/a/../b", "without '..'"),
                         (f"{tmp_path}:/", "cannot mount onto /:"),
                         (f"{tmp_path}://", "cannot mount onto /:"),
                         (f"{tmp_path}:/proc", "cannot mount onto /proc:"),
                         (f"{tmp_path}://proc/sys/", "cannot mount onto /proc/sys:"),
                         (f"{tmp_path}:/sys/fs/cgroup", "cannot mount onto /sys/fs/cgroup:"),
                         (f"{tmp_path}:/dev/shm", "cannot mount onto /dev/shm:")):
        with pytest.raises(s.SpecError, match=message):
            s.parse_volume(bad)


def test_env_and_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HERE", "host value")
    assert s.parse_env("A=b=c") == ("A", "b=c")
    assert s.parse_env("FROM_HERE") == ("FROM_HERE", "host value")
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nX=1\n  Y=two words\n")
    assert s.read_env_file(str(env_file)) == [("X", "1"), ("Y", "two words")]
    with pytest.raises(s.SpecError, match="No such file"):
        s.read_env_file(str(tmp_path / "missing"))


def test_default_env_is_dockers():
    env = dict(s.default_env("box", tty=True))
    assert env["HOSTNAME"] == "box" and env["HOME"] == "/root" and env["TERM"] == "xterm"
    assert "/bin" in env["PATH"].split(os.pathsep)


def test_network_options():
    assert s.check_network("bridge", "10.0.0.5", ()) == "bridge"
    assert s.check_network("host", None, ()) == "host"
    with pytest.raises(s.SpecError, match="--ip needs a network, not --network none"):
        s.check_network("none", "10.0.0.5", ())
    with pytest.raises(s.SpecError, match="-p needs a network, not --network host"):
        s.check_network("host", None, (parse_publish("80:80"),))
    with pytest.raises(s.SpecError, match="bad network name"):
        s.check_network("no/such", None, ())
    assert s.parse_dns("10.0.0.53") == "10.0.0.53"
    with pytest.raises(s.SpecError, match="not an IP address"):
        s.parse_dns("resolver")


@pytest.mark.parametrize("text, published", [
    ("8080:80", Published(8080, 80, "tcp")),
    ("53:5353/udp", Published(53, 5353, "udp")),
    ("1:65535/tcp", Published(1, 65535, "tcp")),
])
def test_publish_parses(text, published):
    assert parse_publish(text) == published


@pytest.mark.parametrize("text", ["80", "a:b", "0:80", "80:70000", "80:80/sctp", ":80"])
def test_bad_publish_is_refused(text):
    with pytest.raises(PortError, match="^-p: "):
        parse_publish(text)
