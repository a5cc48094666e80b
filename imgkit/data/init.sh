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
# /etc/imgkit/init.conf, when present, is sourced before the command line is read (imgkit
# writes it from [trees.NAME.init_config], every value quoted): it sets root=, rootfile=
# (an image on the root device, loop-mounted), lowers= (overlay layers above the root,
# comma-separated, later wins), upper= (tmpfs or a device), command= (the final argv,
# quoted), initctl=, switch= (switch_root, pivot_root or chroot) and the hook functions hook_before_root,
# hook_after_root and hook_before_exec. The command line overrides it with imgkit.root=,
# imgkit.file=, imgkit.lowers=, imgkit.upper=, imgkit.fstype=, imgkit.init=, imgkit.switch=.
# With verity= (the hash device of root=), the root is opened with veritysetup as
# /dev/mapper/root using roothash= (or imgkit.roothash=; imgkit.verity= names the hash device)
# and, with verity_check=, read once whole so that a corrupted block fails the boot loudly.
# A layer of the root for which init.conf's layer_idmap prints a map (u|g|b:ON_DISK:SEEN:COUNT
# ranges) is mounted on /run/imgkit/raw/N and reaches its place as an id-mapped bind mount
# made by /bin/idmap-mount; a filesystem the kernel cannot id-map fails the boot.
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

# -- init config, then the kernel command line ----------------------------------------------
root= rootfstype= rootflags= mode=ro rootdelay=10 command="'/sbin/init'" panic= cmd= want_shell=
rootfile= lowers= upper= initctl= switch=switch_root
verity= roothash= verity_check=1
hook_before_root() { :; }
hook_after_root() { :; }
hook_before_exec() { :; }
layer_idmap() { :; }
run_hook() {
    stage=$1; shift
    "$@" || say "warning: $stage hook '$*' exited with status $?"
}
# run_hook_script STAGE: the script on stdin (a here-document of init.conf), run by sh.
run_hook_script() {
    sh -s || say "warning: $1 hook script exited with status $?"
}
if [ -f /etc/imgkit/init.conf ]; then
    . /etc/imgkit/init.conf || fail "cannot read /etc/imgkit/init.conf"
fi

handle() {
    arg=$(echo "$1" | tr -d '"')
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        rootflags=*) rootflags=${arg#rootflags=} ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
        rootdelay=*) rootdelay=${arg#rootdelay=} ;;
        init=*) command="'${arg#init=}'" ;;
        imgkit.init=*) command="'${arg#imgkit.init=}'" ;;
        imgkit.root=*) root=${arg#imgkit.root=} ;;
        imgkit.file=*) rootfile=${arg#imgkit.file=} ;;
        imgkit.fstype=*) rootfstype=${arg#imgkit.fstype=} ;;
        imgkit.lowers=*) lowers=${arg#imgkit.lowers=} ;;
        imgkit.upper=*) upper=${arg#imgkit.upper=} ;;
        imgkit.switch=*) switch=${arg#imgkit.switch=} ;;
        roothash=*) roothash=${arg#roothash=} ;;
        imgkit.roothash=*) roothash=${arg#imgkit.roothash=} ;;
        imgkit.verity=*) verity=${arg#imgkit.verity=} ;;
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
if [ -z "$root" ] && [ -z "$lowers" ]; then
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

find_dev() {
    case "$1" in
        /dev/*) [ -b "$1" ] && echo "$1" ;;
        LABEL=*|UUID=*) findfs "$1" 2>/dev/null ;;
        PARTLABEL=*)
            want=${1#PARTLABEL=}
            for ev in /sys/class/block/*/uevent; do
                if grep -qx "PARTNAME=$want" "$ev" 2>/dev/null; then
                    echo "/dev/$(basename "$(dirname "$ev")")"; return
                fi
            done ;;
        PARTUUID=*)
            want=$(lower "${1#PARTUUID=}")
            for p in /sys/class/block/*; do
                [ -f "$p/partition" ] || continue
                if [ "$(partuuid "$(basename "$p")")" = "$want" ]; then
                    echo "/dev/$(basename "$p")"; return
                fi
            done ;;
        *) echo "unsupported" ;;
    esac
}

# wait_dev SPEC: sets dev to the block device SPEC names, once it has appeared (else fail).
wait_dev() {
    tries=$((rootdelay * 10))
    while :; do
        dev=$(find_dev "$1")
        [ "$dev" = unsupported ] && fail "$1 is not understood (expected /dev/NAME, LABEL=, UUID=, PARTLABEL= or PARTUUID=)"
        [ -n "$dev" ] && [ -b "$dev" ] && return
        tries=$((tries - 1))
        [ $tries -le 0 ] && fail "device $1 did not appear within ${rootdelay}s (block devices: $(ls /sys/class/block 2>/dev/null | tr '\n' ' '))"
        usleep 100000
    done
}

# mount_dev SPEC DIR OPTS [TYPE]: mount the device SPEC names on DIR.
mount_dev() {
    say "waiting up to ${rootdelay}s for $1"
    wait_dev "$1"
    if [ -n "$4" ]; then
        mount -t "$4" -o "$3" "$dev" "$2" || fail "cannot mount $dev ($1) as $4"
    else
        mount -o "$3" "$dev" "$2" || fail "cannot mount $dev ($1); known filesystems: $(grep -v nodev /proc/filesystems | tr -d '\t' | tr '\n' ' ')"
    fi
    say "mounted $dev ($1) on $2 ($3)"
}

# mount_layer SPEC DIR OPTS [TYPE]: a device, DEVICE:/path (an image file, loop-mounted, or
# a directory on that device, mounted once under /run/imgkit/media) or /dir of the initramfs.
media=0
mount_layer() {
    mkdir -p "$2"
    case "$1" in
        *:/*)
            spec=${1%%:/*} path=/${1#*:/}
            key=$(echo "$spec" | tr -c 'A-Za-z0-9\n' _)
            mnt=/run/imgkit/media/$key
            if ! grep -q " $mnt " /proc/mounts; then
                mkdir -p "$mnt"
                mount_dev "$spec" "$mnt" ro
            fi
            if [ -d "$mnt$path" ]; then
                mount --bind "$mnt$path" "$2" || fail "cannot bind $path of $spec on $2"
            elif [ -f "$mnt$path" ]; then
                if [ -n "$4" ]; then
                    mount -t "$4" -o loop,ro "$mnt$path" "$2" || fail "cannot loop-mount $path of $spec as $4"
                else
                    mount -o loop,ro "$mnt$path" "$2" || fail "cannot loop-mount $path of $spec (is the loop module loaded, and the filesystem's?)"
                fi
                say "loop-mounted $path of $spec on $2"
            else
                fail "$path is neither a file nor a directory on $spec (it holds: $(ls "$mnt" | tr '\n' ' '))"
            fi ;;
        /dev/*|*=*) mount_dev "$1" "$2" "$3" "$4" ;;
        /*) [ -d "$1" ] || fail "layer $1 is not a directory of the initramfs"
            mount --bind "$1" "$2" || fail "cannot bind $1 on $2" ;;
        *) fail "layer $1 is not understood (expected a device, DEVICE:/path or /dir)" ;;
    esac
}

# mount_mapped SPEC DIR OPTS [TYPE]: mount_layer, or, when init.conf maps SPEC's ids
# (layer_idmap), the layer mounted on /run/imgkit/raw/N and an id-mapped clone of it put on
# DIR by idmap-mount (open_tree, mount_setattr(MOUNT_ATTR_IDMAP), move_mount).
raw=0
mount_mapped() {
    map=$(layer_idmap "$1")
    if [ -z "$map" ]; then
        mount_layer "$@"
        return
    fi
    raw=$((raw + 1))
    rawdir=/run/imgkit/raw/$raw
    mount_layer "$1" "$rawdir" "$3" "$4"
    rawtype=$(awk -v m="$rawdir" '$2 == m { t = $3 } END { print t }' /proc/mounts)
    command -v idmap-mount >/dev/null 2>&1 || fail "layer $1: idmap-mount is not in the initramfs (imgkit adds it with idmap or idmaps)"
    mkdir -p "$2"
    if ! err=$(idmap-mount "$rawdir" "$2" "$map" 2>&1); then
        fail "layer $1 (${rawtype:-unknown filesystem}) cannot be id-mapped with '$map': ${err#idmap-mount: }; id-mapped mounts need a filesystem that allows them (Linux 6.1: ext4, xfs, btrfs, vfat, f2fs; not squashfs, erofs, iso9660 or tmpfs)"
    fi
    say "id-mapped layer $1 ($rawtype, $map) on $2"
}

# open_verity: root (the data device) and verity (its hash device) opened with veritysetup
# as /dev/mapper/root, which becomes the root; with verity_check, every block is read once,
# so a corrupted image stops the boot here instead of failing reads later.
open_verity() {
    [ -n "$roothash" ] || fail "verity: no root hash for $root (expected roothash=HEX on the kernel command line, e.g. roothash=\${verity:root} in a UKI cmdline)"
    command -v veritysetup >/dev/null 2>&1 || fail "verity: veritysetup is not in the initramfs (add binaries = [\"veritysetup\"])"
    say "waiting up to ${rootdelay}s for $root and its hash device $verity"
    wait_dev "$root"; data_dev=$dev
    wait_dev "$verity"; hash_dev=$dev
    mkdir -p /run/cryptsetup
    veritysetup open "$data_dev" root "$hash_dev" "$roothash" \
        || fail "verity: veritysetup open $data_dev root $hash_dev $roothash failed (is $verity the hash device of $root, and the root hash its own?)"
    if [ ! -b /dev/mapper/root ]; then  # no udev: the node is /dev/dm-N on devtmpfs
        for name in /sys/block/dm-*/dm/name; do
            if [ "$(cat "$name" 2>/dev/null)" = root ]; then
                dm=${name%/dm/name}
                mkdir -p /dev/mapper && ln -sf "/dev/${dm##*/}" /dev/mapper/root
            fi
        done
    fi
    [ -b /dev/mapper/root ] || fail "verity: /dev/mapper/root did not appear after veritysetup open"
    say "verity: $data_dev opened as /dev/mapper/root with hash device $hash_dev"
    if [ -n "$verity_check" ]; then
        if ! err=$(dd if=/dev/mapper/root of=/dev/null bs=1M 2>&1); then
            fail "verity: $root ($data_dev) does not match its hash tree on $verity ($hash_dev) for root hash $roothash: reading /dev/mapper/root failed ($(echo "$err" | grep -i error | head -n 1)); the image is corrupted or modified"
        fi
        say "verity: every block of $root matches root hash $roothash"
    fi
    root=/dev/mapper/root
}

hook_before_root

[ -n "$verity" ] && open_verity

opts=$mode
[ -n "$rootflags" ] && opts="$opts,$rootflags"
layer_spec=$root
[ -n "$root" ] && [ -n "$rootfile" ] && layer_spec="$root:$rootfile"
if [ -z "$lowers" ] && [ -z "$upper" ]; then
    mount_mapped "$layer_spec" /newroot "$opts" "$rootfstype"
else
    # the stack: root at the bottom, then lowers (later wins); overlayfs lists the top first
    n=0 lowerdir= type=$rootfstype saved_ifs=$IFS
    stack="$layer_spec,$lowers"  # split on the commas: only expanded text is split
    set -f; IFS=,
    for layer in $stack; do
        IFS=$saved_ifs; set +f
        [ -z "$layer" ] && continue
        n=$((n + 1))
        mount_mapped "$layer" "/run/imgkit/layer/$n" ro "$type"
        type=
        lowerdir="/run/imgkit/layer/$n${lowerdir:+:$lowerdir}"
    done
    IFS=$saved_ifs; set +f
    [ $n -ge 1 ] || fail "no overlay layers (root= or lowers= must name at least one)"
    overlay_opts="lowerdir=$lowerdir"
    if [ -n "$upper" ]; then
        mkdir -p /run/imgkit/upper
        if [ "$upper" = tmpfs ]; then
            mount -t tmpfs -o mode=0755 tmpfs /run/imgkit/upper || fail "cannot mount the tmpfs upper layer"
        else
            mount_dev "$upper" /run/imgkit/upper rw
        fi
        mkdir -p /run/imgkit/upper/upper /run/imgkit/upper/work || fail "cannot make upper/ and work/ on $upper"
        overlay_opts="$overlay_opts,upperdir=/run/imgkit/upper/upper,workdir=/run/imgkit/upper/work"
    fi
    mount -t overlay overlay -o "$overlay_opts" /newroot || fail "cannot mount the overlay ($overlay_opts; is the overlay module loaded?)"
    say "mounted an overlay of $n layers${upper:+ under $upper} on /"
fi

hook_after_root

eval "set -- $command"' "$@"'
init=$1
if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    fail "the final command $init does not exist on the root filesystem ($layer_spec${lowers:+,$lowers})"
fi

for fs in dev proc sys; do
    if [ -d "/newroot/$fs" ]; then
        mount --move "/$fs" "/newroot/$fs" || umount -l "/$fs"
    else
        umount -l "/$fs"
    fi
done

hook_before_exec

# /dev/initctl: a watcher, forked now, that powers off on any write. Its root stays the
# initramfs, which switch_root empties, so it keeps busybox on a tmpfs of its own and holds
# the FIFO open (read-write: the open does not wait for a writer).
if [ -n "$initctl" ] && [ -d /newroot/dev ]; then
    mkdir -p /run/imgkit/keep
    mount -t tmpfs -o size=4m,mode=0700 tmpfs /run/imgkit/keep && cp /bin/busybox /run/imgkit/keep/busybox \
        && rm -f /newroot/dev/initctl && mkfifo -m 0600 /newroot/dev/initctl \
        || fail "cannot make /dev/initctl"
    exec 3<>/newroot/dev/initctl
    (
        read -r -n 1 _ <&3
        echo "imgkit-init: /dev/initctl written: powering off"
        exec /run/imgkit/keep/busybox poweroff -f
    ) &
    exec 3>&-
fi

# pivot_root: the kernel refuses to pivot away from the initramfs (rootfs has no parent
# mount), so the init first moves to a small tmpfs holding only busybox (switch_root, which
# empties the initramfs), then pivot_root's into the root, the old root going onto a directory
# of it (/run, /mnt or /tmp) from where it is detached.
pivot_into() {
    for old in run mnt tmp; do
        [ -d "/newroot/$old" ] && [ ! -L "/newroot/$old" ] && break
        old=
    done
    [ -n "$old" ] || fail "pivot_root: the root has no /run, /mnt or /tmp directory for the old root"
    stage=/run/imgkit/stage
    mkdir -p $stage
    { mount -t tmpfs -o size=8m,mode=0755 tmpfs $stage && mkdir -p $stage/bin $stage/newroot \
        && cp /bin/busybox $stage/bin/busybox && ln -s busybox $stage/bin/sh \
        && mount --move /newroot $stage/newroot; } || fail "pivot_root: cannot stage a tmpfs root"
    say "entering the root with pivot_root (old root on /$old)"
    exec switch_root $stage /bin/busybox sh -c '
        old=$1; shift
        cd /newroot && /bin/busybox pivot_root . "$old" || {
            echo "imgkit-init: ERROR: pivot_root /newroot /newroot/$old failed"; /bin/busybox poweroff -f; }
        "/$old/bin/busybox" umount -l "/$old" || echo "imgkit-init: warning: cannot detach the old root"
        exec "$@"' pivot "$old" "$@"
}

case "$switch" in
    switch_root) exec switch_root /newroot "$@" ;;
    chroot) cd /newroot && exec chroot /newroot "$@" ;;
    pivot_root) pivot_into "$@" ;;
    *) fail "switch=$switch: expected switch_root, pivot_root or chroot" ;;
esac
echo "imgkit-init: ERROR: $switch to $init failed"
poweroff -f
