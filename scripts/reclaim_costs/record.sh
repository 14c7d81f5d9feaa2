#!/bin/bash
# Record the reclaim path's tracepoints while usemem writes past a memory cgroup's limit.
# Usage (root): record.sh CGROUP_PROCS_FILE [THREADS MB PASSES]
#   CGROUP_PROCS_FILE: cgroup.procs of a memory cgroup limited to ~256 MB, with swap enabled on the
#   machine (we used zram: no brd/pmem on our VM kernel). Writes trace.txt; then run analyze.py on it.
# Function tracing is not available on our kernel, so every duration analyze.py reports is an
# interval between two tracepoints.
set -euo pipefail
procs=$1; threads=${2:-2}; mb=${3:-200}; passes=${4:-2}
here=$(dirname "$(readlink -f "$0")")
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T
gcc -O2 -pthread -o /tmp/usemem "$here/usemem.c"
old_clock=$(sed -n 's/.*\[\(.*\)\].*/\1/p' $T/trace_clock); old_size=$(cat $T/buffer_size_kb)
restore() { echo 0 > $T/tracing_on; echo > $T/set_event; echo "$old_clock" > $T/trace_clock
            echo "$old_size" > $T/buffer_size_kb; echo 1 > $T/tracing_on; }
trap restore EXIT
echo 0 > $T/tracing_on
echo nop > $T/current_tracer
echo > $T/set_event
echo x86-tsc > $T/trace_clock
echo 100000 > $T/buffer_size_kb
for e in vmscan:mm_vmscan_memcg_reclaim_begin vmscan:mm_vmscan_memcg_reclaim_end vmscan:mm_vmscan_lru_isolate \
         vmscan:mm_vmscan_lru_shrink_inactive vmscan:mm_vmscan_lru_shrink_active vmscan:mm_vmscan_write_folio \
         tlb:tlb_flush ipi:ipi_send_cpumask ipi:ipi_send_cpu csd:csd_queue_cpu csd:csd_function_entry \
         csd:csd_function_exit irq_vectors:call_function_entry irq_vectors:call_function_exit \
         irq_vectors:call_function_single_entry irq_vectors:call_function_single_exit lock:contention_begin \
         lock:contention_end exceptions:page_fault_user block:block_bio_queue kmem:mm_page_free_batched; do
    echo "$e" >> $T/set_event || echo "not available: $e" >&2
done
echo > $T/trace
echo 1 > $T/tracing_on
echo "CAL0 $(date +%s%N)" > $T/trace_marker   # analyze.py calibrates the TSC clock from these two marks
sh -c "echo \$\$ > $procs; exec /tmp/usemem $threads $mb $passes c"
echo "CAL1 $(date +%s%N)" > $T/trace_marker
echo 0 > $T/tracing_on
for c in $(ls -d $T/per_cpu/cpu* | xargs -n1 basename); do echo "$c"; grep -E 'overrun|dropped' $T/per_cpu/$c/stats; done
cat $T/trace > trace.txt
