/*
 * fnlet-init is PID 1 of every call's container: it runs the call's program
 * as its child, reaps orphans, and when the program ends writes its exit
 * code to /dev/.fnlet/exit (a file of the call's directory on the node,
 * bind-mounted by the runtime) before exiting with that code itself; it
 * marks that file "-" when it starts (see began).
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
 * Warm mode (fnlet-init --warm): a pool's pre-started container runs the
 * init alone, before any call is known. It holds /dev/.fnlet/ctl/go (a
 * FIFO of the container's directory, bind-mounted read-only) open for
 * reading and writing, so that the runtime can tell it waits (an open for
 * writing with O_NONBLOCK succeeds) and wake it by writing one byte. It
 * then reads the call from /dev/.fnlet/ctl/call: NUL-terminated entries,
 * each tagged by its first byte (A an argument, E an environment entry,
 * C the working directory), takes /dev/.fnlet/ctl/stdin as the program's
 * stdin when it exists, and runs the program as in the cold case.
 *
 * Build: cc -static -Os -s -o fnlet-init fnlet-init.c (hack/build-init.sh)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_FILE "/dev/.fnlet/exit"
#define CTL_GO "/dev/.fnlet/ctl/go"
#define CTL_CALL "/dev/.fnlet/ctl/call"
#define CTL_STDIN "/dev/.fnlet/ctl/stdin"
/* A call's argv and env are bounded by the apiserver's object size. */
#define CALL_MAX (4 << 20)

/*
 * began marks the exit file "-\n" (not an exit code) as this init's first
 * act: a task that stopped with the file still empty never ran the
 * program. runc's init dies before exec'ing us when "runc start" is cut
 * short ("write exec fifo: broken pipe"), and the runtime then runs the
 * call again instead of reporting runc's error as the call's.
 */
static void began(void) {
	int fd = open(EXIT_FILE, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, "-\n", 2) != 2)
		fprintf(stderr, "fnlet-init: mark start: %s\n", strerror(errno));
	close(fd);
}

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

/* The call delivered to a warm container. */
struct call {
	char **argv, **envp, *cwd;
};

/* wait_call blocks until the runtime writes the go byte, then reads the
 * call. Any failure is the runtime's fault or a call it never sent: the
 * init exits 126 and the runtime replaces the container. */
static int wait_call(struct call *c) {
	int go = open(CTL_GO, O_RDWR | O_CLOEXEC);
	if (go < 0) {
		fprintf(stderr, "fnlet-init: open %s: %s\n", CTL_GO, strerror(errno));
		return -1;
	}
	char b;
	ssize_t n;
	while ((n = read(go, &b, 1)) < 0 && errno == EINTR)
		;
	close(go);
	if (n != 1) {
		fprintf(stderr, "fnlet-init: wait for the call: %s\n", n < 0 ? strerror(errno) : "end of file");
		return -1;
	}
	int fd = open(CTL_CALL, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > CALL_MAX) {
		fprintf(stderr, "fnlet-init: read %s: %s\n", CTL_CALL, fd < 0 ? strerror(errno) : "bad size");
		return -1;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	size_t got = 0, entries = 0;
	while (buf && got < (size_t)st.st_size) {
		n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (!buf || got != (size_t)st.st_size || buf[got - 1] != '\0') {
		fprintf(stderr, "fnlet-init: read %s: short or unterminated\n", CTL_CALL);
		return -1;
	}
	for (size_t i = 0; i < got; i++)
		entries += buf[i] == '\0';
	c->argv = calloc(entries + 1, sizeof(char *));
	c->envp = calloc(entries + 1, sizeof(char *));
	c->cwd = "/";
	if (!c->argv || !c->envp)
		return -1;
	size_t na = 0, ne = 0;
	for (char *p = buf; p < buf + got; p += strlen(p) + 1) {
		switch (*p) {
		case 'A': c->argv[na++] = p + 1; break;
		case 'E': c->envp[ne++] = p + 1; break;
		case 'C': c->cwd = p + 1; break;
		}
	}
	if (na == 0) {
		fprintf(stderr, "fnlet-init: %s has no program\n", CTL_CALL);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv) {
	sigset_t all, orig;
	pid_t child;
	struct call warm = {0};

	if (argc < 2) {
		fprintf(stderr, "usage: fnlet-init program [args...] | fnlet-init --warm\n");
		return 127;
	}
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &orig);
	began();
	if (strcmp(argv[1], "--warm") == 0 && wait_call(&warm) < 0) {
		record(126);
		return 126;
	}

	child = fork();
	if (child < 0) {
		fprintf(stderr, "fnlet-init: fork: %s\n", strerror(errno));
		record(126);
		return 126;
	}
	if (child == 0) {
		char **prog = argv + 1;
		sigprocmask(SIG_SETMASK, &orig, NULL);
		if (warm.argv) {
			int in = open(CTL_STDIN, O_RDONLY);
			if (in >= 0 && in != 0) {
				dup2(in, 0);
				close(in);
			}
			if (chdir(warm.cwd) < 0) {
				fprintf(stderr, "fnlet-init: chdir %s: %s\n", warm.cwd, strerror(errno));
				_exit(126);
			}
			environ = warm.envp;
			prog = warm.argv;
		}
		execvp(prog[0], prog);
		/* The shell's convention: 127 not found, 126 found but not runnable. */
		int code = errno == ENOENT ? 127 : 126;
		fprintf(stderr, "fnlet-init: exec %s: %s\n", prog[0], strerror(errno));
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
