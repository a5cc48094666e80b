/* idmap-mount SOURCE TARGET MAP: an id-mapped bind mount of SOURCE (recursive) on TARGET.
 *
 * Part of imgkit's initramfs: busybox mount cannot make id-mapped mounts. MAP is spelled
 * like mount(8)'s X-mount.idmap: blank-separated TYPE:ON_DISK:SEEN:COUNT entries, TYPE u,
 * g or b (both), or ON_DISK:SEEN:COUNT for both; a file owned by ON_DISK on the filesystem
 * is seen through TARGET as owned by SEEN. The mapping is carried by a user namespace made
 * for it (a child that unshares one; its uid_map/gid_map written from here), attached with
 * mount_setattr(MOUNT_ATTR_IDMAP) to a detached clone of SOURCE (open_tree), which is then
 * moved onto TARGET (move_mount). A filesystem the kernel cannot id-map fails at
 * mount_setattr (EINVAL); the error names the call and the errno.
 *
 * Built by imgkit with gcc -static; the syscalls go through syscall(2), the kernel's
 * numbers and structures coming from the kernel headers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAP_SIZE 4096

static void die(const char *what, const char *arg) {
    int e = errno;
    fprintf(stderr, "idmap-mount: %s %s: %s (%s)\n", what, arg, strerror(e),
            strerrorname_np(e) ? strerrorname_np(e) : "?");
    exit(1);
}

static void bad_map(const char *entry) {
    fprintf(stderr, "idmap-mount: bad map entry '%s' (expected u|g|b:ON_DISK:SEEN:COUNT "
            "or ON_DISK:SEEN:COUNT)\n", entry);
    exit(2);
}

/* Append one "ON_DISK SEEN COUNT" line per entry of map to uids and/or gids. */
static void parse_map(char *map, char *uids, char *gids) {
    for (char *entry = strtok(map, " \t\n"); entry; entry = strtok(NULL, " \t\n")) {
        char type = 'b', line[96], end;
        unsigned long disk, seen, count;
        const char *ids = entry;
        if (entry[0] && entry[1] == ':' && strchr("ugb", entry[0])) {
            type = entry[0];
            ids = entry + 2;
        }
        if (sscanf(ids, "%lu:%lu:%lu%c", &disk, &seen, &count, &end) != 3 || count == 0)
            bad_map(entry);
        snprintf(line, sizeof line, "%lu %lu %lu\n", disk, seen, count);
        if (strlen(uids) + strlen(gids) + 2 * strlen(line) >= MAP_SIZE)
            bad_map(entry);  /* far beyond the kernel's 340 ranges */
        if (type == 'u' || type == 'b')
            strcat(uids, line);
        if (type == 'g' || type == 'b')
            strcat(gids, line);
    }
}

static void write_map(pid_t pid, const char *name, const char *text) {
    char path[64];
    if (!*text)
        return;  /* ids of that kind stay unmapped: seen as the overflow id */
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        die("cannot write", path);
    close(fd);
}

/* A user namespace holding the mapping, as a file descriptor. */
static int userns_fd(const char *uids, const char *gids) {
    int ready[2];
    char byte = 0, path[64];
    if (pipe2(ready, O_CLOEXEC) < 0)
        die("pipe", "");
    pid_t pid = fork();
    if (pid < 0)
        die("fork", "");
    if (pid == 0) {  /* the namespace's only process: unshare, say so, wait to be killed */
        byte = unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
        if (write(ready[1], &byte, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(ready[1]);
    if (read(ready[0], &byte, 1) != 1 || byte != 'y') {
        errno = byte == 'n' ? EPERM : ECHILD;
        die("unshare", "CLONE_NEWUSER");
    }
    write_map(pid, "uid_map", uids);
    write_map(pid, "gid_map", gids);
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("cannot open", path);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return fd;
}

int main(int argc, char **argv) {
    static char uids[MAP_SIZE], gids[MAP_SIZE];
    if (argc != 4) {
        fprintf(stderr, "usage: idmap-mount SOURCE TARGET 'u:ON_DISK:SEEN:COUNT g:...'\n");
        return 2;
    }
    parse_map(argv[3], uids, gids);
    if (!*uids && !*gids)
        bad_map(argv[3]);
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, argv[1],
                            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (tree < 0)
        die("open_tree", argv[1]);
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP};
    attr.userns_fd = (unsigned)userns_fd(uids, gids);
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr))
        die("mount_setattr(MOUNT_ATTR_IDMAP) on", argv[1]);
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, argv[2], MOVE_MOUNT_F_EMPTY_PATH))
        die("move_mount to", argv[2]);
    return 0;
}
