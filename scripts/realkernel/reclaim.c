/* reclaim THREADS MB [PASSES]: page reclaim that lasts, inside a memory cgroup smaller than THREADS x MB.
 *
 * Thread i is pinned to the i-th CPU it may run on (wrapping round) and maps MB megabytes (fractions allowed)
 * of anonymous memory of its own, with transparent huge pages off so that every page faults on its own. The
 * threads start together (a barrier), write their regions from start to end PASSES times (2), filling each
 * page, and keep them until every thread is done (a second barrier). So all the memory stays in use for the
 * whole run: once it exceeds the cgroup's memory.max, the kernel must reclaim (unmap pages, flush the other
 * CPUs' TLBs, swap out) for every page written, and the second pass reads back what the first pushed out.
 *
 * Prints each thread's time per pass, then one line with the totals.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static size_t region;
static int passes = 2;
static long page_size;
static pthread_barrier_t start, done;

static double seconds_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct worker {
	pthread_t tid;
	int index, cpu;
};

static void *fill(void *arg)
{
	struct worker *w = arg;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(w->cpu, &one);
	if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0)
		fprintf(stderr, "reclaim: cannot pin a thread to CPU %d\n", w->cpu);
	char *area = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("reclaim: mmap");
		exit(1);
	}
	madvise(area, region, MADV_NOHUGEPAGE);
	pthread_barrier_wait(&start);
	for (int pass = 0; pass < passes; pass++) {
		double t0 = seconds_now();
		for (size_t off = 0; off < region; off += page_size)
			memset(area + off, 1 + pass, page_size);
		printf("reclaim: thread %d on CPU %d, pass %d: %.3f s\n", w->index, w->cpu, pass, seconds_now() - t0);
	}
	pthread_barrier_wait(&done);
	munmap(area, region);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: reclaim THREADS MB [PASSES]\n");
		return 2;
	}
	long threads = atol(argv[1]);
	double mb = atof(argv[2]);
	if (argc == 4)
		passes = atoi(argv[3]);
	page_size = sysconf(_SC_PAGESIZE);
	region = ((size_t)(mb * (1 << 20)) + page_size - 1) / page_size * page_size;
	if (threads < 1 || region == 0 || passes < 1) {
		fprintf(stderr, "reclaim: THREADS, MB and PASSES must be positive\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	cpu_set_t allowed;
	sched_getaffinity(0, sizeof(allowed), &allowed);
	int cpus[CPU_SETSIZE], ncpus = 0;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &allowed))
			cpus[ncpus++] = c;
	struct worker *workers = calloc(threads, sizeof(*workers));
	pthread_barrier_init(&start, NULL, threads + 1);
	pthread_barrier_init(&done, NULL, threads);
	for (long i = 0; i < threads; i++) {
		workers[i].index = (int)i;
		workers[i].cpu = cpus[i % ncpus];
		pthread_create(&workers[i].tid, NULL, fill, &workers[i]);
	}
	pthread_barrier_wait(&start);
	double t0 = seconds_now();
	for (long i = 0; i < threads; i++)
		pthread_join(workers[i].tid, NULL);
	double s = seconds_now() - t0;
	printf("reclaim: %ld threads x %zu KB x %d passes on %d CPUs: %.3f s, %.0f KB/s\n", threads, region >> 10,
	       passes, ncpus, s, (double)threads * passes * (region >> 10) / s);
	return 0;
}
