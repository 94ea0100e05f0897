"""A bundle made by ``runc spec``, edited only for its root and its
command, runs under pycontainer-runtime with what runc gives it: the same
capabilities, mounts (points, types and options), masked and read-only
paths, hostname, limits, and exit code, compared side by side."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

RUNC = shutil.which("runc")
RUNTIME = str(Path(sys.executable).parent / "pycontainer-runtime")
pytestmark = pytest.mark.skipif(RUNC is None, reason="runc is not installed")

#: What the container reports of itself; every line is compared.
PROBE = r"""
grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status
echo "uid $(id -u) gid $(id -g) groups $(id -G)"
echo "hostname $(hostname)"
ip link show lo | head -1 | cut -d' ' -f2-3
echo "nofile $(ulimit -n)"
awk '{ sep = 0; for (i = 7; i <= NF; i++) if ($i == "-") sep = i;
       print "mount", $5, $6, $(sep + 1) }' /proc/self/mountinfo | sort
for p in /proc/kcore /proc/keys /proc/timer_list /proc/acpi /proc/scsi /sys/firmware; do
  if [ -d "$p" ]; then echo "masked-dir $p $(ls -A "$p" | wc -l)";
  else echo "masked-file $p $(wc -c < "$p" 2>&1)"; fi
done
for p in /proc/sys /proc/sysrq-trigger /proc/bus /proc/fs /proc/irq; do
  touch "$p" 2>/dev/null && echo "writable $p" || echo "read-only $p"
done
touch /rootfile 2>/dev/null && echo "root writable" || echo "root read-only"
ls /dev | tr '\n' ' '; echo
exit 7
"""


def _run(runtime: str, bundle: Path, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([runtime, "--root", str(state), "run", "--bundle", str(bundle),
                           f"t{uuid.uuid4().hex[:10]}"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _normalised(output: str) -> list[str]:
    """Lines, less what differs between any two runs: device numbers of
    the per-container file systems."""
    return [re.sub(r"^mount (\S+) \S+", r"mount \1", line) for line in output.splitlines()]


def test_runc_spec_bundle_runs_as_under_runc(tmp_path, image_root):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copytree(image_root, bundle / "rootfs", symlinks=True)
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["sh", "-c", PROBE])
    (bundle / "config.json").write_text(json.dumps(config))
    runc = _run(RUNC, bundle, tmp_path / "runc-state")
    ours = _run(RUNTIME, bundle, tmp_path / "our-state")
    assert runc.returncode == ours.returncode == 7, (runc.stderr, ours.stderr)
    assert _normalised(ours.stdout) == _normalised(runc.stdout)
    assert "CapBnd:\t0000000020000420" in ours.stdout  # the template's three
    assert "hostname runc" in ours.stdout and "root read-only" in ours.stdout
