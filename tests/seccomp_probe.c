/* A seccomp probe for the tests: makes the one system call argv[1] names
   (argv[2] and argv[3] its arguments) and prints 0 if it succeeded, else
   its errno.  Static, so it runs in the busybox image. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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
    } else {
        fprintf(stderr, "usage: probe CALL [ARG...]\n");
        return 2;
    }
    printf("%ld\n", r);
    return 0;
}
