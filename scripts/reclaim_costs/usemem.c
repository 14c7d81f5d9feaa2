/* usemem-like: T pthreads, each mmaps its own anonymous R MB region (MADV_NOHUGEPAGE)
 * and writes it sequentially one 4 KB page at a time (memset of the page), PASSES times.
 * usage: usemem T R_MB [passes=2] [fill: c=constant memset (default), r=pseudo-random words]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <stdint.h>
#include <unistd.h>

static size_t region; static int passes = 2; static char fill = 'c';
static double now(void){ struct timespec ts; clock_gettime(CLOCK_MONOTONIC,&ts); return ts.tv_sec+ts.tv_nsec*1e-9; }
static void *worker(void *arg){
    long id = (long)arg;
    char *p = mmap(NULL, region, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED){ perror("mmap"); exit(1); }
    if (madvise(p, region, MADV_NOHUGEPAGE)) perror("madvise(MADV_NOHUGEPAGE)");
    uint64_t x = 0x9E3779B97F4A7C15ull * (id+1);
    for (int pass = 0; pass < passes; pass++){
        double t0 = now();
        for (size_t off = 0; off < region; off += 4096){
            if (fill == 'c') memset(p+off, 0x5a + pass, 4096);
            else { uint64_t *w = (uint64_t*)(p+off); for (int i=0;i<512;i++){ x ^= x<<13; x ^= x>>7; x ^= x<<17; w[i]=x; } }
        }
        double t1 = now();
        fprintf(stderr, "thread %ld pass %d: %.3f s, %.0f KB/s\n", id, pass, t1-t0, region/1024.0/(t1-t0));
    }
    munmap(p, region);
    return NULL;
}
int main(int argc, char **argv){
    if (argc < 3){ fprintf(stderr,"usage: %s T R_MB [passes] [c|r]\n",argv[0]); return 1; }
    int T = atoi(argv[1]); region = (size_t)atol(argv[2])<<20;
    if (argc > 3) passes = atoi(argv[3]);
    if (argc > 4) fill = argv[4][0];
    pthread_t th[T];
    double t0 = now();
    for (long i=0;i<T;i++) pthread_create(&th[i],NULL,worker,(void*)i);
    for (int i=0;i<T;i++) pthread_join(th[i],NULL);
    double dt = now()-t0;
    double kb = (double)T*passes*(region/1024.0);
    printf("T=%d R=%zuMB passes=%d fill=%c wall=%.3f s total_written=%.0f KB throughput=%.0f KB/s\n",
           T, region>>20, passes, fill, dt, kb, kb/dt);
    return 0;
}
