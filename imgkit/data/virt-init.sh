#!/bin/busybox sh
# /init of an `imgkit virt` VM: mount the host's directory on /work, run one command there,
# report its exit status, power off. Nothing else runs (no udev, no getty, no services).
#
# Channels (all 8250 UARTs, built into the kernel, so no module and no device discovery):
#   ttyS0  the kernel console and this script's own diagnostics (shown only on failure)
#   ttyS1  the command's stdout    ttyS2  the command's stderr    (raw mode: bytes unchanged)
#   ttyS3  control lines for the host: IMGKIT-VIRT-START, IMGKIT-VIRT-NOTFOUND,
#          IMGKIT-VIRT-ERROR <text>, IMGKIT-VIRT-EXIT <status>
# A serial tty's last close waits until the UART has handed every byte to the host, so
# output is never lost to the power-off that follows.
#
# The per-run settings come from a second cpio archive loaded with the cached one, never
# from the kernel command line, so arguments arrive byte for byte: /imgkit-run/conf is a
# shell fragment written by the host with every word single-quoted; it sets the positional
# parameters to the command line and sets IMGKIT_RO=0|1, IMGKIT_IMAGE=0|1; /imgkit-run/env
# holds one quoted ``export 'NAME=VALUE'`` line per variable the user asked for.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /work /newroot
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

CTL=/dev/ttyS3
stop() {
    sync
    poweroff -f
    while :; do sleep 3600; done  # PID 1 must never exit
}
fail() {
    echo "imgkit-virt: ERROR: $*"
    echo "IMGKIT-VIRT-ERROR $*" >"$CTL"
    stop
}

[ -f /imgkit-run/conf ] || fail "no /imgkit-run/conf: the per-run archive is missing"
IMGKIT_RO=0 IMGKIT_IMAGE=0
. /imgkit-run/conf

load() {
    [ -f "$1" ] || return 0
    while read -r module; do
        [ -n "$module" ] && { insmod "$module" || fail "insmod $module failed"; }
    done <"$1"
}
load /etc/imgkit/modules

opts=trans=virtio,version=9p2000.L,msize=262144
[ "$IMGKIT_RO" = 1 ] && opts=ro,$opts
tries=50
until mount -t 9p -o "$opts" work /work 2>/dev/null; do
    tries=$((tries - 1))
    [ $tries -le 0 ] && fail "cannot mount the 9p share 'work' on /work ($(mount -t 9p -o "$opts" work /work 2>&1))"
    usleep 20000
done

root=
if [ "$IMGKIT_IMAGE" = 1 ]; then
    load /etc/imgkit/modules-image
    tries=100
    until [ -b /dev/vda ]; do
        tries=$((tries - 1))
        [ $tries -le 0 ] && fail "the image disk /dev/vda did not appear"
        usleep 20000
    done
    # a bare filesystem, else the first partition that mounts as ext4
    for dev in /dev/vda $(ls -d /sys/class/block/vda[0-9]* 2>/dev/null | sed 's|.*/|/dev/|'); do
        [ -b "$dev" ] || continue
        if mount -t ext4 "$dev" /newroot 2>/dev/null; then root=$dev; break; fi
    done
    [ -n "$root" ] || fail "no ext4 filesystem on the image (tried /dev/vda and its partitions: $(ls /sys/class/block | tr '\n' ' '))"
    [ -e /newroot/bin/sh ] || [ -L /newroot/bin/sh ] || fail "the image ($root) has no /bin/sh to start the command with"
    for d in proc sys dev work; do
        mkdir -p "/newroot/$d" 2>/dev/null
        [ -d "/newroot/$d" ] || fail "the image has no /$d directory and it cannot be created"
    done
    mount -t proc proc /newroot/proc
    mount -t sysfs sysfs /newroot/sys
    mount -o bind /dev /newroot/dev
    mount -o bind /work /newroot/work || fail "cannot bind /work into the image"
fi

# Raw mode: no CR/LF translation, no echo; the settings stay with the port between opens.
stty -F /dev/ttyS1 raw -echo -opost 2>/dev/null
stty -F /dev/ttyS2 raw -echo -opost 2>/dev/null
cd /work || fail "cannot enter /work"
echo IMGKIT-VIRT-START >"$CTL"

# The command runs in a subshell whose only open files are /dev/null and the two ports.
export IMGKIT_CWD="${IMGKIT_CWD:-/work}"
RUN='cd "$IMGKIT_CWD" || exit 125
unset IMGKIT_CWD
export HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
'$(cat /imgkit-run/env 2>/dev/null)'
if ! command -v "$1" >/dev/null 2>&1; then echo IMGKIT-VIRT-NOTFOUND >'"$CTL"'; exit 127; fi
exec "$@"'
if [ -n "$root" ]; then
    # the image's own shell: its PATH lookup, its binaries
    chroot /newroot /bin/sh -c "$RUN" imgkit "$@" </dev/null >/dev/ttyS1 2>/dev/ttyS2
    status=$?
else
    (eval "$RUN") </dev/null >/dev/ttyS1 2>/dev/ttyS2
    status=$?
fi
echo "IMGKIT-VIRT-EXIT $status" >"$CTL"
[ -n "$root" ] && umount -l /newroot/work /newroot/dev /newroot/sys /newroot/proc /newroot 2>/dev/null
umount /work 2>/dev/null
stop
