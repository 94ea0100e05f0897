#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) for pyunion + pycontainer:
# the system packages, then a virtualenv in .venv with the project in it,
# its pyfuse3 patched for FUSE passthrough (scripts/pyfuse3/passthrough.patch).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse3/libfuse3-dev/pkg-config: FUSE itself and what pyfuse3 builds against;
# busybox-static: the small base image; libseccomp2 and python3-seccomp (its
# own Python bindings): container syscall filters; fuse-overlayfs,
# unionfs-fuse, runc, crun: the peers the benchmarks and comparisons run
# beside pyunion, pycontainer and pycontainer-runtime; libc6-dev: the static
# libc the tests' small C probes link against; podman, conmon: the container
# engine that starts pyunion as its overlay driver's mount_program, and
# pycontainer-runtime as its runtime (tests and bench).
packages=(fuse3 libfuse3-dev pkg-config gcc libc6-dev busybox-static libseccomp2 python3-seccomp fuse-overlayfs unionfs-fuse runc crun podman conmon)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "setup: $python is older than 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv

# pyfuse3 with FUSE passthrough and cached directories: 3.5.0 and our patch,
# built against libfuse 3.17 or newer (the system's if it has one, else
# Debian trixie's, built into .venv/fuse).  Its version names the patch, so
# it is rebuilt only when the patch changes, and installed before the
# project so that pip keeps it.
pyfuse3=3.5.0+passthrough$(sha256sum scripts/pyfuse3/passthrough.patch | cut -c1-12)
pyfuse3_version() { .venv/bin/python -c 'from importlib.metadata import version; print(version("pyfuse3"))' 2>/dev/null || true; }
if [ "$(pyfuse3_version)" != "$pyfuse3" ]; then
    fuse_headers=$(pkg-config --variable=includedir fuse3 2>/dev/null || true)/fuse3/fuse_lowlevel.h
    if pkg-config --atleast-version=3.17 fuse3 && [ -e "$fuse_headers" ]; then
        pkg_config_path=${PKG_CONFIG_PATH:-}
    else
        [ -e .venv/fuse/lib/pkgconfig/fuse3.pc ] || { echo "setup: building libfuse 3.17.2"; bash scripts/build-libfuse.sh .venv/fuse; }
        pkg_config_path=$PWD/.venv/fuse/lib/pkgconfig
    fi
    echo "setup: building pyfuse3 $pyfuse3"
    PKG_CONFIG_PATH=$pkg_config_path bash scripts/build-pyfuse3.sh "$pyfuse3"
    [ "$(pyfuse3_version)" = "$pyfuse3" ] || { echo "setup: pyfuse3 $pyfuse3 did not install" >&2; exit 1; }
fi
# pip answers quickly when everything is already there.
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]' 2>&1 \
    | grep -v "^WARNING: Location" || true
# The seccomp module: libseccomp's own bindings as Debian keeps them, updated
# with the libseccomp2 they match.  PyPI has no kept equivalent (pyseccomp:
# ctypes, last released in 2021; mephi42-seccomp: one person's rebuild), so
# the venv links Debian's build of that one module, not all of dist-packages.  It is built for Debian's CPython 3.11 and loads in any
# CPython 3.11 (same ABI tag), which is checked here.
seccomp_so=$(dpkg -L python3-seccomp | grep '/seccomp\.cpython-.*\.so$')
suffix=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
[[ $seccomp_so == *"$suffix" ]] \
    || { echo "setup: python3-seccomp is not built for the venv's Python ($suffix)" >&2; exit 1; }
ln -sfn "$seccomp_so" "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("platlib"))')/"
.venv/bin/python -c 'import pyfuse3, trio, click, seccomp' \
    || { echo "setup: the Python packages did not install" >&2; exit 1; }
[ "$(pyfuse3_version)" = "$pyfuse3" ] \
    || { echo "setup: pip replaced the patched pyfuse3 $pyfuse3" >&2; exit 1; }

# mount(8) runs helpers with the system PATH only: `mount -t fuse.pyunion`
# finds the program there.
for program in pyunion pycontainer pycontainer-runtime; do
    ln -sfn "$PWD/.venv/bin/$program" "/usr/local/bin/$program"
done

# pyunion's and pycontainer's own launchers in place of pip's scripts:
# Python without site processing, and mounts and container commands handed
# to a fork server that has imported everything once (unionfs/launcher.py,
# unionfs/forkserver.py).
for program in pyunion pycontainer; do
    env -u PYTHONPATH "$PWD/.venv/bin/python3" -m unionfs.launcher "$PWD/.venv/bin/$program" "$program"
done
