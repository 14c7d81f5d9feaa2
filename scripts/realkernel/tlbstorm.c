/* tlbstorm THREADS PAGES ITERATIONS: a storm of remote TLB flushes.
 *
 * Thread i is pinned to the i-th CPU it may run on (wrapping round), maps PAGES pages of anonymous memory of
 * its own, and ITERATIONS times writes a byte into each page (a page fault each) and then drops them all with
 * madvise(MADV_DONTNEED). The threads share one address space, so every drop must flush that range from the
 * TLBs of the other CPUs running it: on x86 the kernel queues a flush_tlb_func call for each such CPU and
 * sends function-call IPIs to those whose queue was empty. The threads start together (a barrier), so the
 * flushes overlap from the first iteration.
 *
 * Prints one line: threads, pages, iterations and the wall time from the barrier to the last thread's end.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long pages, iterations, page_size;
static pthread_barrier_t start;

static double seconds_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *storm(void *arg)
{
	int cpu = (int)(long)arg;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0)
		fprintf(stderr, "tlbstorm: cannot pin a thread to CPU %d\n", cpu);
	size_t len = (size_t)pages * page_size;
	volatile char *area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("tlbstorm: mmap");
		exit(1);
	}
	pthread_barrier_wait(&start);
	for (long it = 0; it < iterations; it++) {
		for (long p = 0; p < pages; p++)
			area[p * page_size] = (char)it;
		if (madvise((void *)area, len, MADV_DONTNEED) != 0) {
			perror("tlbstorm: madvise");
			exit(1);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: tlbstorm THREADS PAGES ITERATIONS\n");
		return 2;
	}
	long threads = atol(argv[1]);
	pages = atol(argv[2]);
	iterations = atol(argv[3]);
	page_size = sysconf(_SC_PAGESIZE);
	if (threads < 1 || pages < 1 || iterations < 1) {
		fprintf(stderr, "tlbstorm: THREADS, PAGES and ITERATIONS must be positive\n");
		return 2;
	}
	cpu_set_t allowed;
	sched_getaffinity(0, sizeof(allowed), &allowed);
	int cpus[CPU_SETSIZE], ncpus = 0;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &allowed))
			cpus[ncpus++] = c;
	pthread_t *tid = calloc(threads, sizeof(*tid));
	pthread_barrier_init(&start, NULL, threads + 1);
	for (long i = 0; i < threads; i++)
		pthread_create(&tid[i], NULL, storm, (void *)(long)cpus[i % ncpus]);
	pthread_barrier_wait(&start);
	double t0 = seconds_now();
	for (long i = 0; i < threads; i++)
		pthread_join(tid[i], NULL);
	printf("tlbstorm: %ld threads x %ld pages x %ld iterations on %d CPUs: %.3f s\n", threads, pages, iterations,
	       ncpus, seconds_now() - t0);
	return 0;
}
