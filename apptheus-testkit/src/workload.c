/*
 * A workload with known resource use, for the apptheus tests. Built static
 * (gcc -O2 -static) and copied into the test images as /bin/workload.
 *
 *   workload [-m MIB] [-k CHILDREN] [-c CPU_SECONDS] [-w MIB -f FILE] [-s HOLD]
 *
 * In this order: allocates MIB MiB and writes every page (the memory stays
 * touched until exit); forks CHILDREN children one after another, each
 * exiting at once, and waits for each; burns CPU_SECONDS of its own CPU time
 * (CLOCK_PROCESS_CPUTIME_ID); writes MIB MiB to FILE (O_DIRECT when the
 * file system allows, else written and fsync'ed); prints what it did; then
 * sleeps HOLD seconds (negative: until killed) and exits 0.
 *
 * Output, one line each, flushed at once:
 *   apptheus-workload cgroup <a line of /proc/self/cgroup>   (one per line)
 *   apptheus-workload started pid=P ppid=Q
 *   apptheus-workload done pid=P cpu_us=N children_cpu_us=N children=N
 *       touched_mib=N written_bytes=N direct=0|1 maxrss_kib=N
 * (the done line is one line). Exits 2 on a usage error, 1 if a step fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1L << 20)

static double cpu_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static long long usec(struct timeval t)
{
	return (long long)t.tv_sec * 1000000LL + t.tv_usec;
}

static void fail(const char *what)
{
	fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void print_cgroups(void)
{
	char line[4096];
	FILE *f = fopen("/proc/self/cgroup", "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		printf("apptheus-workload cgroup %s\n", line);
	}
	fclose(f);
}

/* Writes mib MiB to path; returns the bytes written, sets *direct. */
static long long write_file(const char *path, long mib, int *direct)
{
	char *buf;
	long long written = 0;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
	*direct = fd >= 0;
	if (fd < 0)
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		fail(path);
	if (posix_memalign((void **)&buf, 4096, CHUNK))
		fail("posix_memalign");
	memset(buf, 'a', CHUNK);
	for (long i = 0; i < mib; i++) {
		ssize_t n = write(fd, buf, CHUNK);
		if (n < 0 && *direct && errno == EINVAL && i == 0) {
			/* O_DIRECT accepted at open but refused at write. */
			close(fd);
			*direct = 0;
			fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd < 0)
				fail(path);
			n = write(fd, buf, CHUNK);
		}
		if (n != CHUNK)
			fail("write");
		written += n;
	}
	if (fsync(fd))
		fail("fsync");
	close(fd);
	free(buf);
	return written;
}

int main(int argc, char **argv)
{
	double cpu = 0, hold = 0;
	long mib = 0, write_mib = 0, children = 0;
	const char *file = NULL;
	int opt;

	while ((opt = getopt(argc, argv, "c:m:k:s:w:f:")) != -1) {
		switch (opt) {
		case 'c': cpu = atof(optarg); break;
		case 'm': mib = atol(optarg); break;
		case 'k': children = atol(optarg); break;
		case 's': hold = atof(optarg); break;
		case 'w': write_mib = atol(optarg); break;
		case 'f': file = optarg; break;
		default:
			fprintf(stderr, "usage: workload [-m MIB] [-k CHILDREN] [-c CPU_SECONDS] "
					"[-w MIB -f FILE] [-s HOLD_SECONDS]\n");
			return 2;
		}
	}
	if (write_mib > 0 && !file) {
		fprintf(stderr, "workload: -w needs -f FILE\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	print_cgroups();
	printf("apptheus-workload started pid=%d ppid=%d\n", getpid(), getppid());

	char *mem = NULL;
	if (mib > 0) {
		mem = malloc(mib * CHUNK);
		if (!mem)
			fail("malloc");
		for (long i = 0; i < mib * CHUNK; i += 4096)
			mem[i] = 1;
	}

	for (long i = 0; i < children; i++) {
		pid_t k = fork();
		if (k < 0)
			fail("fork");
		if (k == 0)
			_exit(0);
		if (waitpid(k, NULL, 0) < 0)
			fail("waitpid");
	}

	volatile double x = 0;
	double t0 = cpu_now();
	while (cpu_now() - t0 < cpu)
		x += 1;

	long long written = 0;
	int direct = 0;
	if (write_mib > 0)
		written = write_file(file, write_mib, &direct);

	struct rusage self, kids;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &kids);
	printf("apptheus-workload done pid=%d cpu_us=%lld children_cpu_us=%lld children=%ld "
	       "touched_mib=%ld written_bytes=%lld direct=%d maxrss_kib=%ld\n",
	       getpid(), usec(self.ru_utime) + usec(self.ru_stime),
	       usec(kids.ru_utime) + usec(kids.ru_stime), children, mib, written, direct,
	       self.ru_maxrss);

	if (hold < 0)
		for (;;)
			pause();
	if (hold > 0) {
		struct timespec t = { (time_t)hold, (long)((hold - (double)(time_t)hold) * 1e9) };
		while (nanosleep(&t, &t) && errno == EINTR)
			;
	}
	return mem && mem[0] != 1;
}
