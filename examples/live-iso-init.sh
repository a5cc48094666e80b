#!/bin/busybox sh
# /sbin/init of the live root in examples/live-iso.toml: proves the root is the overlay, and
# shows its mount (upperdir on the initramfs' tmpfs) for the test that checks the medium.
/bin/busybox echo written > /etc/written || /bin/busybox echo "imgkit live: ERROR: / is not writable"
/bin/busybox echo "imgkit live: root mount: $(/bin/busybox grep ' / ' /proc/mounts)"
/bin/busybox [ "$(/bin/busybox cat /etc/written)" = written ] && /bin/busybox echo "imgkit live: overlay root is writable ($(/bin/busybox grep ' / ' /proc/mounts | /bin/busybox cut -d' ' -f3))"
/bin/busybox poweroff -f
