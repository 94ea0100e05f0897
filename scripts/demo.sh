#!/usr/bin/env bash
# Sets up (see setup.sh), then shows a union at work: a small base tree in
# two read-only layers under an empty writable branch, mounted with pyunion,
# listed and read, then unmounted; then a container run on a union over the
# busybox image. Leaves nothing behind (the image stays in the store).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
pyunion=$PWD/.venv/bin/pyunion

demo=$(mktemp -d /tmp/pyunion-demo.XXXXXX)
cleanup() {
    if grep -q " $demo/mnt " /proc/mounts; then "$pyunion" umount "$demo/mnt"; fi
    rm -rf "$demo"
}
trap cleanup EXIT

# The base image: busybox in the lowest layer, a later layer that changes it.
mkdir -p "$demo"/{base/bin,base/etc,patch/etc,upper,mnt}
cp /bin/busybox "$demo/base/bin/busybox"
ln -s busybox "$demo/base/bin/sh"
echo "base image" > "$demo/base/etc/motd"
echo "secret from the base" > "$demo/base/etc/shadow"
echo "patched by the second layer" > "$demo/patch/etc/motd"
touch "$demo/patch/etc/.wh.shadow"          # the second layer deletes etc/shadow

"$pyunion" mount -o "br=$demo/upper=rw:$demo/patch=ro:$demo/base=ro" "$demo/mnt"
echo "== mounted: $(grep " $demo/mnt " /proc/mounts)"
echo "== find"
(cd "$demo/mnt" && find . | sort)
echo "== cat etc/motd"
cat "$demo/mnt/etc/motd"
echo "== etc/shadow is whited out:"
ls "$demo/mnt/etc/shadow" 2>&1 || true
echo "== run the base's busybox from the union"
"$demo/mnt/bin/busybox" echo "hello from busybox in the union"
"$pyunion" umount "$demo/mnt"
echo "== unmounted"

# The same union, as a container's root: pycontainer mounts it itself.
pycontainer=$PWD/.venv/bin/pycontainer
echo "== pycontainer image busybox"
"$pycontainer" image busybox
echo "== pycontainer run --rm busybox sh -c 'echo hello from \$(hostname); ps; ip -4 addr show eth0'"
"$pycontainer" run --rm --hostname demo busybox sh -c 'echo hello from $(hostname); ps; ip -4 addr show eth0'
