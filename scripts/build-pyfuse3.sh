#!/usr/bin/env bash
# Builds pyfuse3 3.5.0 from its sdist with scripts/pyfuse3/passthrough.patch
# (FUSE passthrough, cached directory listings, plain READDIR) and installs
# it into .venv as version VERSION, a local version of 3.5.0, which pip
# keeps for the project's pyfuse3 requirement.  The libfuse it builds
# against is the one pkg-config finds (PKG_CONFIG_PATH).
# Usage: build-pyfuse3.sh VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1
sdist_sha256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
fail() { echo "setup: $*" >&2; exit 1; }
pip() { .venv/bin/pip --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

include=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("include"))')
if [ ! -e "$include/Python.h" ]; then
    [[ $include == /usr/* ]] || fail "the venv's Python has no headers ($include/Python.h)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dev >/dev/null
fi

work=$(mktemp -d /tmp/pyunion-pyfuse3.XXXXXX)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps --no-binary pyfuse3 pyfuse3==3.5.0 -d "$work" >/dev/null
echo "$sdist_sha256  $work/pyfuse3-3.5.0.tar.gz" | sha256sum --check --quiet >/dev/null 2>&1 \
    || fail "could not download pyfuse3-3.5.0.tar.gz with the expected sha256"
tar xzf "$work/pyfuse3-3.5.0.tar.gz" -C "$work"
patch -p1 --quiet -d "$work/pyfuse3-3.5.0" < scripts/pyfuse3/passthrough.patch >/dev/null \
    || fail "scripts/pyfuse3/passthrough.patch does not apply to pyfuse3 3.5.0"
# The sdist's build backend regenerates the C code from the patched Cython.
SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3=$version \
    .venv/bin/pip wheel --quiet --disable-pip-version-check --no-deps -w "$work/wheel" \
    "$work/pyfuse3-3.5.0" >"$work/build.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$work/build.log" | tail -n 20 >&2; fail "building pyfuse3 failed"; }
pip install --quiet --no-deps --force-reinstall "$work"/wheel/pyfuse3-*.whl
