/*
 * fnlet-init is PID 1 of every call's container: it runs the call's program
 * as its child, reaps orphans, and when the program ends writes its exit
 * code to /dev/.fnlet/exit (a file of the call's directory on the node,
 * bind-mounted by the runtime) before exiting with that code itself.
 *
 * Why: containerd, restarted after a task ended, discards the shim of a
 * task that has no processes left, exit status included. The file keeps the
 * status on the node, where the manager reads it when containerd cannot
 * tell (see internal/ctrd, lostResult).
 *
 * Why C: it shares the call's limits. One thread and ~100 KiB, where a Go
 * binary starts several threads (pids.max counts them) and a few MiB.
 *
 * Signals: fnlet signals every process of a call (kill --all), so the
 * program receives them directly. This init blocks them all and never
 * forwards, which would deliver a second copy. SIGKILL still ends it, and
 * the kernel then kills the rest of the call.
 *
 * Build: cc -static -Os -s -o fnlet-init fnlet-init.c (hack/build-init.sh)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_FILE "/dev/.fnlet/exit"

static void record(int code) {
	char buf[16];
	int n = snprintf(buf, sizeof buf, "%d\n", code);
	int fd = open(EXIT_FILE, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (fd < 0)
		return; /* run without the runtime's mount: nothing to record */
	if (write(fd, buf, (size_t)n) != n)
		fprintf(stderr, "fnlet-init: record exit code: %s\n", strerror(errno));
	close(fd);
}

int main(int argc, char **argv) {
	sigset_t all, orig;
	pid_t child;

	if (argc < 2) {
		fprintf(stderr, "usage: fnlet-init program [args...]\n");
		return 127;
	}
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &orig);

	child = fork();
	if (child < 0) {
		fprintf(stderr, "fnlet-init: fork: %s\n", strerror(errno));
		record(126);
		return 126;
	}
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &orig, NULL);
		execvp(argv[1], argv + 1);
		/* The shell's convention: 127 not found, 126 found but not runnable. */
		int code = errno == ENOENT ? 127 : 126;
		fprintf(stderr, "fnlet-init: exec %s: %s\n", argv[1], strerror(errno));
		_exit(code);
	}

	for (;;) {
		int status;
		pid_t p = waitpid(-1, &status, 0);
		if (p < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "fnlet-init: wait: %s\n", strerror(errno));
			record(126);
			return 126;
		}
		if (p != child)
			continue; /* an orphan reaped */
		int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		record(code);
		/* Returning ends PID 1: the kernel kills what the program left. */
		return code;
	}
}
