/* A probe for the tests: does the one thing argv[1] names and prints 0 if
   it succeeded, else its errno (or, for "forks", a count).  Static, so it
   runs in the busybox image.

     probe clone|clone3 FLAGS      make a child with these flags
     probe io_uring_setup          ask for a ring
     probe personality VALUE
     probe socket FAMILY           a stream socket
     probe i386 NR [ARG]           an i386-ABI call (int $0x80)
     probe syscall NR [ARG...]     a native call, up to six numeric arguments
     probe mknod PATH b|c MAJOR MINOR
     probe open PATH               read-only, without blocking
     probe forks MAX               children made (each pauses; all killed after)
     probe alloc MIB               allocate and touch that much memory  */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static long result(long r) { return r < 0 ? errno : 0; }

static long child_of(long pid) {
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    return result(pid);
}

static long i386_call(long nr, long arg) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(arg) : "memory");
    return r < 0 && r > -4096 ? -r : 0;
}

static long forks(long max) {
    pid_t children[4096];
    long made = 0;
    while (made < max && made < 4096) {
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) { pause(); _exit(0); }
        children[made++] = pid;
    }
    for (long i = 0; i < made; i++) kill(children[i], SIGKILL);
    for (long i = 0; i < made; i++) waitpid(children[i], NULL, 0);
    return made;
}

static long alloc(long mib) {
    for (long i = 0; i < mib; i++) {
        volatile char *chunk = malloc(1 << 20);
        if (!chunk) return ENOMEM;
        for (long page = 0; page < 1 << 20; page += 4096) chunk[page] = 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    unsigned long arg = argc > 2 ? strtoul(argv[2], NULL, 0) : 0;
    long r;
    if (!strcmp(what, "clone")) {
        r = child_of(syscall(SYS_clone, arg | SIGCHLD, 0, 0, 0, 0));
    } else if (!strcmp(what, "clone3")) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = arg;
        ca.exit_signal = SIGCHLD;
        r = child_of(syscall(SYS_clone3, &ca, sizeof ca));
    } else if (!strcmp(what, "io_uring_setup")) {
        char params[120];
        memset(params, 0, sizeof params);
        r = result(syscall(SYS_io_uring_setup, 1, params));
    } else if (!strcmp(what, "personality")) {
        r = result(syscall(SYS_personality, arg));
    } else if (!strcmp(what, "socket")) {
        r = result(syscall(SYS_socket, arg, SOCK_STREAM, 0));
    } else if (!strcmp(what, "i386")) {   /* i386 ABI: nr, one argument */
        r = i386_call(arg, argc > 3 ? strtol(argv[3], NULL, 0) : 0);
    } else if (!strcmp(what, "syscall") && argc <= 9) {
        unsigned long a[6] = {0};
        for (int i = 3; i < argc; i++) a[i - 3] = strtoul(argv[i], NULL, 0);
        r = result(syscall(arg, a[0], a[1], a[2], a[3], a[4], a[5]));
    } else if (!strcmp(what, "mknod") && argc == 6) {
        mode_t type = argv[3][0] == 'b' ? S_IFBLK : S_IFCHR;
        r = result(mknod(argv[2], type | 0600,
                         makedev(strtoul(argv[4], NULL, 0), strtoul(argv[5], NULL, 0))));
    } else if (!strcmp(what, "open") && argc == 3) {
        int fd = open(argv[2], O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        r = result(fd);
        if (fd >= 0) close(fd);
    } else if (!strcmp(what, "forks")) {
        r = forks(arg);
    } else if (!strcmp(what, "alloc")) {
        r = alloc(arg);
    } else {
        fprintf(stderr, "usage: probe CALL [ARG...]\n");
        return 2;
    }
    printf("%ld\n", r);
    return 0;
}
