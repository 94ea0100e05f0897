#!/usr/bin/env bash
# Builds libfuse 3.17.2 (FUSE passthrough needs 3.17; Debian 12 has 3.14)
# into PREFIX as a static library with its headers and fuse3.pc, from
# Debian trixie's fuse3 source package with Debian's patches.  Only the
# library: mounting as non-root uses the system's fusermount3 (the same
# protocol).  Usage: build-libfuse.sh PREFIX
set -euo pipefail
prefix=$(realpath -m "$1")
orig_sha256=3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
fail() { echo "setup: $*" >&2; exit 1; }

# meson and ninja from Debian, like the compiler: the build tools of
# Debian's own fuse3 package, signed by the same archive, and meson 1.0 is
# new enough (libfuse asks for 0.51).  patch and xz-utils unpack the source.
missing=()
for p in meson ninja-build patch xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/pyunion-libfuse.XXXXXX)
mkdir -p "$(dirname "$prefix")"
stage=$(mktemp -d "$prefix.stage.XXXXXX")  # beside PREFIX: one rename puts it in place
trap 'rm -rf "$work" "$stage"' EXIT
log=$work/build.log

# A sources list of its own, so the system's apt configuration stays as it
# is.  apt checks the index against the archive's signed Release file and
# the download against the index; the orig tarball's hash is pinned too.
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$work/sources.list"
chown -R _apt "$work"  # apt downloads as _apt
apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get "${apt[@]}" update -qq >"$log" 2>&1 \
    || fail "could not read Debian trixie's source index (see apt-get update)"
(cd "$work/src" && apt-get "${apt[@]}" source --download-only -qq fuse3) >>"$log" 2>&1 \
    || fail "could not download Debian trixie's fuse3 source package"
cd "$work/src"
[ -e fuse3_3.17.2.orig.tar.gz ] || fail "trixie's fuse3 is no longer 3.17.2: update scripts/build-libfuse.sh"
echo "$orig_sha256  fuse3_3.17.2.orig.tar.gz" | sha256sum --check --quiet >/dev/null 2>&1 \
    || fail "fuse3_3.17.2.orig.tar.gz does not have the expected sha256"
tar xzf fuse3_3.17.2.orig.tar.gz
tar xJf fuse3_3.17.2-*.debian.tar.xz -C fuse-3.17.2
cd fuse-3.17.2
while read -r name _; do
    patch -p1 --quiet --forward < "debian/patches/$name" >>"$log" 2>&1 \
        || fail "Debian's patch $name does not apply"
done < <(grep -v '^\s*\(#\|$\)' debian/patches/series)

# Static, so pyfuse3's extension carries the library: nothing to find at
# run time (no rpath, no clash with the system's libfuse3.so.3).  Symbol
# versions are off because the versioned compatibility aliases
# (fuse_new@FUSE_3.1) cannot be linked from an archive into a shared object.
meson setup build --prefix="$prefix" --libdir=lib --buildtype=release \
    -Ddefault_library=static -Ddisable-libc-symbol-version=true \
    -Dutils=false -Dexamples=false -Dtests=false >>"$log" 2>&1 \
    && ninja -C build >>"$log" 2>&1 \
    && DESTDIR="$stage" meson install -C build --quiet >>"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; fail "building libfuse 3.17.2 failed"; }
rm -rf "$prefix"
mv "$stage$prefix" "$prefix"
