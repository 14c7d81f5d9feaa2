/* Two threads pinned to one CPU hand a token back and forth through futexes: each hand-off is one futex
 * wake, one context switch and the woken thread's return from futex wait. A second loop times the same
 * futex calls with nothing to switch to (a wake with no waiter, a wait on a changed value that returns
 * at once), so the difference per hand-off is the switch itself. Usage: pingpong [CPU] [ROUNDS] */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic int turn;
static long rounds;
static int cpu;

static long futex(_Atomic int *addr, int op, int val) {
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

static void pin(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) { perror("sched_setaffinity"); exit(1); }
}

static void *player(void *arg) {
    int me = (int)(long)arg;
    pin();
    for (long i = 0; i < rounds; i++) {
        while (atomic_load(&turn) != me)
            futex(&turn, FUTEX_WAIT_PRIVATE, 1 - me);
        atomic_store(&turn, 1 - me);
        futex(&turn, FUTEX_WAKE_PRIVATE, 1);
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    cpu = argc > 1 ? atoi(argv[1]) : 0;
    rounds = argc > 2 ? atol(argv[2]) : 200000;
    pthread_t a, b;
    double t0 = now();
    pthread_create(&a, NULL, player, (void *)0);
    pthread_create(&b, NULL, player, (void *)1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    double handoff = (now() - t0) / (2.0 * rounds);
    pin();
    _Atomic int other = 5;
    t0 = now();
    for (long i = 0; i < rounds; i++) {
        futex(&other, FUTEX_WAKE_PRIVATE, 1);
        futex(&other, FUTEX_WAIT_PRIVATE, 4);  /* value differs: returns EAGAIN at once */
    }
    double calls = (now() - t0) / rounds;
    printf("hand-off %.0f ns, its futex calls alone %.0f ns, switch %.0f ns\n",
           handoff * 1e9, calls * 1e9, (handoff - calls) * 1e9);
    return 0;
}
