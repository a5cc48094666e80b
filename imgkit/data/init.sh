#!/bin/busybox sh
# imgkit built-in /init for an initramfs holding a static busybox.
#
# What it does, in order:
#   1. installs busybox applet links, mounts /proc, /sys and devtmpfs on /dev
#      (the kernel does not mount devtmpfs inside an initramfs by itself);
#   2. loads the modules listed in /etc/imgkit/modules, one path per line, in order,
#      with insmod (a line may carry module parameters after the path);
#   3. reads /proc/cmdline:
#        root=/dev/vdX | LABEL=x | UUID=x | PARTLABEL=x | PARTUUID=x
#        rootfstype=TYPE  rootflags=OPTS  ro | rw  rootwait  rootdelay=SECONDS (default 10)
#        init=/sbin/init  panic=N
#        imgkit.cmd="command"  runs the command in the initramfs (before the root is mounted)
#        imgkit.shell          opens a shell in the initramfs (before the root is mounted)
#   4. with root=: waits for the device, mounts it on /newroot, moves /dev /proc /sys into
#      it and switch_root's to init=; without root=: runs /etc/imgkit/rc if present, else a
#      shell on the console, then powers off.
# On failure it prints "imgkit-init: ERROR ..." and then powers off if panic= is set (after
# that many seconds; negative means at once), else opens a shell.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /newroot
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "imgkit-init: $*"; }

shell() {
    say "starting a shell; exit it to continue"
    setsid cttyhack sh -l 2>/dev/null || sh
}

stop() {
    sync
    poweroff -f
    # poweroff -f should not return; PID 1 must never exit (that panics the kernel)
    while :; do sleep 3600; done
}

fail() {
    echo "imgkit-init: ERROR: $*"
    if [ -n "$panic" ] && [ "$panic" != 0 ]; then
        case "$panic" in -*) ;; *) sleep "$panic" ;; esac
        stop
    fi
    shell
    stop
}

mount -t proc proc /proc || say "warning: cannot mount /proc"
mount -t sysfs sysfs /sys || say "warning: cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || say "warning: cannot mount devtmpfs on /dev"

# -- modules ---------------------------------------------------------------------------------
if [ -f /etc/imgkit/modules ]; then
    while read -r module args; do
        case "$module" in ''|'#'*) continue ;; esac
        # shellcheck disable=SC2086  # args are module parameters, split on purpose
        insmod "$module" $args || say "warning: insmod $module failed"
    done < /etc/imgkit/modules
fi

# -- kernel command line ---------------------------------------------------------------------
root= rootfstype= rootflags= mode=ro rootdelay=10 init=/sbin/init panic= cmd= want_shell=

handle() {
    arg=$(echo "$1" | tr -d '"')
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        rootflags=*) rootflags=${arg#rootflags=} ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
        rootdelay=*) rootdelay=${arg#rootdelay=} ;;
        init=*) init=${arg#init=} ;;
        panic=*) panic=${arg#panic=} ;;
        imgkit.cmd=*) cmd=${arg#imgkit.cmd=} ;;
        imgkit.shell) want_shell=1 ;;
    esac
}

# Words are split on blanks; a double-quoted value (imgkit.cmd="a b") is joined back.
set -f
pending=
for word in $(cat /proc/cmdline); do
    if [ -n "$pending" ]; then
        pending="$pending $word"
        case "$word" in *\"*) handle "$pending"; pending= ;; esac
        continue
    fi
    case "$word" in
        *\"*\"*) handle "$word" ;;
        *\"*) pending=$word ;;
        *) handle "$word" ;;
    esac
done
[ -n "$pending" ] && handle "$pending"
set +f

[ -n "$want_shell" ] && shell
if [ -n "$cmd" ]; then
    sh -c "$cmd" || say "warning: imgkit.cmd exited with status $?"
fi

# -- no root: run the hook or a shell, then power off ----------------------------------------
if [ -z "$root" ]; then
    if [ -f /etc/imgkit/rc ]; then
        sh /etc/imgkit/rc || say "warning: /etc/imgkit/rc exited with status $?"
    elif [ -z "$cmd" ]; then
        shell
    fi
    stop
fi

# -- finding the root device -----------------------------------------------------------------
# PARTUUID of partition /dev/NAME: from the GPT entry (mixed-endian GUID) or, on an MBR disk,
# the disk signature plus the partition number ("SSSSSSSS-PP").
hexat() { dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | hexdump -v -e '1/1 "%02x"'; }
partuuid() {
    name=$1
    [ -f "/sys/class/block/$name/partition" ] || return 1
    num=$(cat "/sys/class/block/$name/partition")
    parent=$(basename "$(dirname "$(readlink -f "/sys/class/block/$name")")")
    disk=/dev/$parent
    sector=$(cat "/sys/class/block/$parent/queue/logical_block_size" 2>/dev/null || echo 512)
    if [ "$(dd if="$disk" bs=1 skip="$sector" count=8 2>/dev/null)" = "EFI PART" ]; then
        h=$(hexat "$disk" $((sector + 72)) 8)      # partition entry LBA, little endian
        lba=$((0x${h:14:2}${h:12:2}${h:10:2}${h:8:2}${h:6:2}${h:4:2}${h:2:2}${h:0:2}))
        h=$(hexat "$disk" $((sector + 84)) 4)      # entry size
        esize=$((0x${h:6:2}${h:4:2}${h:2:2}${h:0:2}))
        g=$(hexat "$disk" $((lba * sector + (num - 1) * esize + 16)) 16)
        echo "${g:6:2}${g:4:2}${g:2:2}${g:0:2}-${g:10:2}${g:8:2}-${g:14:2}${g:12:2}-${g:16:4}-${g:20:12}"
    else
        s=$(hexat "$disk" 440 4)
        printf '%s-%02x\n' "${s:6:2}${s:4:2}${s:2:2}${s:0:2}" "$num"
    fi
}

lower() { echo "$1" | tr 'A-Z' 'a-z'; }

find_root() {
    case "$root" in
        /dev/*) [ -b "$root" ] && echo "$root" ;;
        LABEL=*|UUID=*) findfs "$root" 2>/dev/null ;;
        PARTLABEL=*)
            want=${root#PARTLABEL=}
            for ev in /sys/class/block/*/uevent; do
                if grep -qx "PARTNAME=$want" "$ev" 2>/dev/null; then
                    echo "/dev/$(basename "$(dirname "$ev")")"; return
                fi
            done ;;
        PARTUUID=*)
            want=$(lower "${root#PARTUUID=}")
            for p in /sys/class/block/*; do
                [ -f "$p/partition" ] || continue
                if [ "$(partuuid "$(basename "$p")")" = "$want" ]; then
                    echo "/dev/$(basename "$p")"; return
                fi
            done ;;
        *) echo "unsupported" ;;
    esac
}

say "waiting up to ${rootdelay}s for root=$root"
tries=$((rootdelay * 10))
dev=
while :; do
    dev=$(find_root)
    [ "$dev" = unsupported ] && fail "root=$root is not understood (expected /dev/NAME, LABEL=, UUID=, PARTLABEL= or PARTUUID=)"
    [ -n "$dev" ] && [ -b "$dev" ] && break
    tries=$((tries - 1))
    [ $tries -le 0 ] && fail "root device root=$root did not appear within ${rootdelay}s (block devices: $(ls /sys/class/block 2>/dev/null | tr '\n' ' '))"
    usleep 100000
done

opts=$mode
[ -n "$rootflags" ] && opts="$opts,$rootflags"
if [ -n "$rootfstype" ]; then
    mount -t "$rootfstype" -o "$opts" "$dev" /newroot || fail "cannot mount $dev (root=$root) as $rootfstype"
else
    mount -o "$opts" "$dev" /newroot || fail "cannot mount $dev (root=$root); known filesystems: $(grep -v nodev /proc/filesystems | tr -d '\t' | tr '\n' ' ')"
fi
say "mounted $dev on / ($opts)"

if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    fail "init=$init does not exist on the root filesystem $dev"
fi

for fs in dev proc sys; do
    if [ -d "/newroot/$fs" ]; then
        mount --move "/$fs" "/newroot/$fs" || umount -l "/$fs"
    else
        umount -l "/$fs"
    fi
done

exec switch_root /newroot "$init" "$@"
echo "imgkit-init: ERROR: switch_root to $init failed"
poweroff -f
