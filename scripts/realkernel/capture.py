"""Capture a real Linux kernel's cross-CPU calls at any CPU count: Debian's Linux 6.12 cloud kernel booted under
QEMU's software CPU with NCPU virtual CPUs, one workload run inside it with ipilab's own tracepoints on.

    sudo PYTHONPATH=src python3 scripts/realkernel/capture.py NAME --cpus 4 -- tlbstorm 4 16 1700
    sudo PYTHONPATH=src python3 scripts/realkernel/capture.py NAME --cpus 4 --memory-max 16M -- reclaim 4 8

writes NAME.trace.xz (the guest's ftrace text) and NAME.meta (the sidecar `ipilab capture` writes, see
src/ipilab/trace/sidecar.py, plus what the guest is: kernel, cmdline, CPU topology, NUMA nodes, cpuidle driver,
clocksource) into --out. The workload is one of the programs built into the guest:

    tlbstorm THREADS PAGES ITERATIONS   tlbstorm.c: threads pinned one per CPU, each writing its own PAGES pages
                                        and dropping them with madvise(MADV_DONTNEED), ITERATIONS times
    reclaim THREADS MB [PASSES]         reclaim.c: threads pinned one per CPU, each writing its own MB of anonymous
                                        memory from start to end PASSES (2) times, all of it kept to the end

It runs in a memory cgroup limited to --memory-max (default: no limit), with zram swap, so a limit smaller than
what the reclaim threads hold makes the kernel reclaim (unmap, flush TLBs, swap out) throughout.

How: the kernel package comes from bookworm-backports through a private apt source list (the host's apt sources
are not touched) and is cached, with the guest's build, under ~/.cache/ipilab-realkernel. The guest is an
initramfs (busybox, the workload programs, the zram modules) whose /init enables the events, snapshots
/proc/interrupts, runs the workload, and writes everything to its second serial port as text (the trace gzipped
and base64-encoded): the first serial port is the console, so kernel messages cannot mix into the data.

Timing inside the guest is emulated on a host whose vCPU threads share its cores: the guest behaves like an
overcommitted VM (vCPUs descheduled for long stretches). Which CPU queued which call, and whether the kernel sent
an IPI for it, are the real kernel's decisions.

Needs Debian 12 and root when something is missing (it installs qemu-system-x86, busybox-static, gcc and
libc6-dev with apt-get). Anything missing or failing ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipilab.files import published
from ipilab.trace.capture import EVENT_SETS
from ipilab.trace.sidecar import sidecar_for

HERE = Path(__file__).resolve().parent
PROGRAMS = {"tlbstorm": HERE / "tlbstorm.c", "reclaim": HERE / "reclaim.c"}
# ipilab capture's own set, and what calibrating a machine needs besides: the timer tick and user page faults.
EVENTS = (*EVENT_SETS["replay"], "irq_vectors:local_timer_entry", "irq_vectors:local_timer_exit",
          "exceptions:page_fault_user")
# Debian packages we use: QEMU, a static busybox (the guest's only userland: the dynamic busybox package has the
# same path and would not run there), and gcc with the static C library for the workload programs.
PACKAGES = ("qemu-system-x86", "busybox-static", "gcc", "libc6-dev")
BUSYBOX = "/bin/busybox"
KERNEL_PACKAGE = re.compile(r"^linux-image-6\.12\.\d+\+deb12-cloud-amd64$")
ZRAM_MODULES = ("zram",)  # and whatever they depend on, read from each module's .modinfo
# Multi-threaded TCG. With la57 or cx16 on, this QEMU (7.2) crashed the guest in early boot and in SLUB.
QEMU_CPU = ("-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max,la57=off,cx16=off")
GUEST_MB = 2048
ZRAM_SIZE = "768M"
BOOT_ATTEMPTS = 3
RING_TOTAL_KB = 256 * 1024  # the trace ring buffer over all CPUs; far more than a 3 MB .xz trace needs


class Failure(Exception):
    """The capture cannot go on; the message is one line saying why."""


def run(cmd: list[str], what: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise Failure(f"{what}: {last}")
    return proc


def installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.stdout.endswith(" installed")


def ensure_packages() -> None:
    missing = [pkg for pkg in PACKAGES if not installed(pkg)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise Failure(f"missing {', '.join(missing)}: run as root to have them installed, "
                      f"or apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], f"apt-get install {' '.join(missing)}", env=env)
    still = [pkg for pkg in missing if not installed(pkg)]
    if still:
        raise Failure(f"apt-get install {' '.join(still)} ran, but dpkg does not list them as installed")


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        m = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M)
        if m:
            return m[1]
    return "http://deb.debian.org/debian"


def fetch_kernel(cache: Path, package: str | None) -> tuple[Path, Path, str]:
    """The kernel image, its module tree and the package's name and version, downloaded once into `cache`."""
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                      f"{debian_mirror()} bookworm-backports main\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", "APT::Sandbox::User=root"]
    if package is None:
        done = sorted(cache.glob("linux-image-6.12.*_amd64.deb"))
        if not done:
            run(["apt-get", *opts, "update", "-qq"], "apt-get update (bookworm-backports)")
            found = run(["apt-cache", *opts, "search", "--names-only", "^linux-image-6.12"], "apt-cache search")
            names = [line.split()[0] for line in found.stdout.splitlines() if KERNEL_PACKAGE.match(line.split()[0])]
            if not names:
                raise Failure("bookworm-backports has no linux-image-6.12.*+deb12-cloud-amd64 package")
            package = max(names, key=lambda n: [int(x) for x in re.findall(r"\d+", n)])
        else:
            package = done[-1].name.split("_")[0]
    debs = sorted(cache.glob(f"{package}_*_amd64.deb"))
    if not debs:
        run(["apt-get", *opts, "update", "-qq"], "apt-get update (bookworm-backports)")
        run(["apt-get", *opts, "download", "-qq", package], f"apt-get download {package}", cwd=cache)
        debs = sorted(cache.glob(f"{package}_*_amd64.deb"))
    deb = debs[-1]
    tree = cache / deb.stem
    if not tree.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=cache))
        run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
        tmp.rename(tree)
    vmlinuz = next(iter(sorted((tree / "boot").glob("vmlinuz-*"))), None)
    modules = next(iter(sorted((tree / "lib" / "modules").glob("*"))), None)
    if vmlinuz is None or modules is None:
        raise Failure(f"{deb.name} holds no kernel image or no modules")
    _, version, _ = deb.name.split("_")
    return vmlinuz, modules, f"{package} {version}"


def module_order(modules: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko.xz files of `wanted` and what they depend on, dependencies first (the package ships no
    modules.dep: depmod writes it on install, so the dependencies are read from each module's .modinfo)."""
    files = {p.name.removesuffix(".ko.xz").replace("-", "_"): p for p in modules.rglob("*.ko.xz")}
    order: list[Path] = []

    def add(name: str) -> None:
        if name not in files:
            raise Failure(f"the kernel package has no module {name}")
        if files[name] in order:
            return
        m = re.search(rb"depends=([^\0]*)\0", lzma.decompress(files[name].read_bytes()))
        for dep in filter(None, (m[1].decode() if m else "").split(",")):
            add(dep)
        order.append(files[name])

    for name in wanted:
        add(name)
    return order


def guest_init(events: tuple[str, ...], command: str, memory_max: str, ring_kb: int) -> str:
    """The guest's /init (busybox sh). Everything the host keeps is written to ttyS1 as '@@ key value' lines,
    the trace between '@@ trace-begin' and '@@ trace-end'."""
    paths = " ".join(e.replace(":", "/") for e in events)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec 3>/dev/ttyS1
say() {{ echo "@@ $*" >&3; }}
for m in /lib/modules/*.ko; do insmod $m || say error insmod $m; done
echo {ZRAM_SIZE} > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0 || say error zram swap
mkdir -p /sys/fs/cgroup; mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control; mkdir /sys/fs/cgroup/work
echo {memory_max} > /sys/fs/cgroup/work/memory.max || say error memory.max {memory_max}
say memory.max $(cat /sys/fs/cgroup/work/memory.max)
T=/sys/kernel/tracing; mount -t tracefs tracefs $T
echo 0 > $T/tracing_on; echo nop > $T/current_tracer; echo {ring_kb} > $T/buffer_size_kb
for e in {paths}; do
  if echo 1 > $T/events/$e/enable 2>/dev/null; then say event-on $e; else say event-missing $e; fi
done
say uname $(uname -r)
say cmdline $(cat /proc/cmdline)
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  say cpu ${{c##*/cpu}} package $(cat $c/topology/physical_package_id) core $(cat $c/topology/core_id) \\
    siblings $(cat $c/topology/thread_siblings_list)
done
for n in /sys/devices/system/node/node[0-9]*; do say numa ${{n##*/}} cpus $(cat $n/cpulist); done
say cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)
say clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
say swap $(cat /proc/swaps | tail -n +2)
grep -E '^pswp(in|out) ' /proc/vmstat | while read k v; do say vmstat-before $k $v; done
echo > $T/trace
grep -E '^ *(CAL|RES|TLB|LOC):' /proc/interrupts | while read row; do say before $row; done
read up0 idle < /proc/uptime
echo 1 > $T/tracing_on
sh -c 'echo $$ > /sys/fs/cgroup/work/cgroup.procs && exec {command}' > /out.txt 2>&1
status=$?
echo 0 > $T/tracing_on
read up1 idle < /proc/uptime
grep -E '^ *(CAL|RES|TLB|LOC):' /proc/interrupts | while read row; do say after $row; done
grep -E '^pswp(in|out) ' /proc/vmstat | while read k v; do say vmstat-after $k $v; done
say uptime $up0 $up1
say status $status
while read line; do say output $line; done < /out.txt
say lost $(cat $T/per_cpu/cpu*/stats | grep '^overrun:' | sed 's/overrun: *//' | tr '\\n' ' ')
say trace-begin
gzip -c $T/trace | base64 >&3
say trace-end
poweroff -f
"""


def build_initrd(work: Path, modules: Path, command: str, memory_max: str, ncpu: int) -> Path:
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "lib/modules", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for name, source in PROGRAMS.items():
        run(["gcc", "-static", "-O2", "-pthread", "-o", str(root / "bin" / name), str(source)], f"gcc {source.name}")
    # Numbered, so that /init's glob loads each module after what it depends on.
    for i, ko in enumerate(module_order(modules, ZRAM_MODULES)):
        (root / "lib" / "modules" / f"{i:02d}-{ko.name.removesuffix('.xz')}").write_bytes(
            lzma.decompress(ko.read_bytes()))
    init = root / "init"
    init.write_text(guest_init(EVENTS, command, memory_max, max(4096, RING_TOTAL_KB // ncpu)))
    init.chmod(0o755)
    names = "\n".join(sorted(str(p.relative_to(root)) for p in root.rglob("*"))) + "\n"
    proc = subprocess.run([BUSYBOX, "cpio", "-o", "-H", "newc"], cwd=root, input=names.encode(),
                          capture_output=True)
    if proc.returncode != 0:
        raise Failure(f"busybox cpio: {proc.stderr.decode(errors='replace').strip() or proc.returncode}")
    initrd = work / "initrd.gz"
    initrd.write_bytes(gzip.compress(proc.stdout, 6))
    return initrd


def boot(work: Path, vmlinuz: Path, initrd: Path, ncpu: int, timeout: float) -> tuple[str, float]:
    console, data = work / "console.log", work / "data.txt"
    cmd = ["qemu-system-x86_64", *QEMU_CPU, "-smp", str(ncpu), "-m", str(GUEST_MB), "-nodefaults",
           "-display", "none", "-no-reboot", "-monitor", "none", "-kernel", str(vmlinuz), "-initrd", str(initrd),
           "-append", "console=ttyS0 quiet panic=-1 ipv6.disable=1",
           "-serial", f"file:{console}", "-serial", f"file:{data}"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"the guest did not finish in {timeout:g} s; its console is {console}") from None
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise Failure(f"qemu-system-x86_64: {last}")
    if not data.exists():
        raise Failure(f"the guest wrote nothing; its console is {console}")
    return data.read_text(errors="replace").replace("\r", ""), wall


def boot_crash(console: Path, data: str) -> str | None:
    """The guest kernel's oops line when it died before running the workload, else None. Under multi-threaded
    TCG the kernel's boot-time code patching (int3 breakpoints, text_poke) now and then races with another vCPU
    running the patched code and the guest dies in an int3 oops; a second boot does not."""
    if "@@ status " in data:
        return None
    text = console.read_text(errors="replace") if console.exists() else ""
    m = re.search(r"^\[[ \d.]+\] (Oops: .*|Kernel panic.*)$", text, re.M)
    return m[1].strip() if m else None


def parse_guest(text: str, console: Path) -> tuple[dict[str, list[str]], bytes]:
    """The '@@ key value' lines by key, in order, and the trace text."""
    fields: dict[str, list[str]] = {}
    lines = text.split("\n")
    try:
        begin, end = lines.index("@@ trace-begin"), lines.index("@@ trace-end")
    except ValueError:
        raise Failure(f"the guest stopped before sending its trace; its console is {console}") from None
    for line in lines[:begin]:
        if line.startswith("@@ "):
            key, _, value = line[3:].partition(" ")
            fields.setdefault(key, []).append(value)
    try:
        trace = gzip.decompress(base64.b64decode("".join(lines[begin + 1:end]), validate=True))
    except (ValueError, OSError, EOFError) as e:
        raise Failure(f"the trace came back damaged ({e}); the guest's output is {console.with_name('data.txt')}")\
            from None
    return fields, trace


def sidecar_text(fields: dict[str, list[str]], command: str, ncpu: int, kernel: str, qemu: str, wall: float,
                 crashes: list[str]) -> str:
    """The .meta: `ipilab capture`'s lines (command, seconds, events, before, after, lost), then the machine."""
    up0, up1 = (float(x) for x in fields["uptime"][0].split())
    cpus = sorted(fields.get("cpu", []), key=lambda v: int(v.split()[0]))
    lines = [f"# command: {command}", f"# seconds: {up1 - up0:.3f}",
             f"# events: {' '.join(v.replace('/', ':') for v in fields.get('event-on', []))}"]
    if fields.get("event-missing"):
        lines.append(f"# events missing: {' '.join(v.replace('/', ':') for v in fields['event-missing'])}")
    lines += ["# before:", *(f"#   {row}" for row in fields.get("before", [])),
              "# after:", *(f"#   {row}" for row in fields.get("after", [])),
              f"# lost: overrun: {sum(int(x) for x in fields['lost'][0].split())}",
              f"# exit status: {fields['status'][0]}",
              "# clock: seconds is guest time (/proc/uptime, 10 ms steps), emulated; so are the trace's timestamps",
              *(f"# output: {line}" for line in fields.get("output", [])),
              f"# machine: QEMU software CPU (TCG, multi-threaded), q35, -cpu max,la57=off,cx16=off, {ncpu} vCPUs, "
              f"{GUEST_MB} MB; host: {os.cpu_count()} CPUs shared by the vCPU threads; {qemu}",
              f"# kernel package: {kernel} (Debian bookworm-backports)",
              f"# uname: {fields['uname'][0]}", f"# cmdline: {fields['cmdline'][0]}",
              *(f"# cpu {v.split()[0]}: {v.split(maxsplit=1)[1]}" for v in cpus),
              *(f"# numa: {v}" for v in fields.get("numa", [])),
              f"# cpuidle: {fields['cpuidle'][0]}", f"# clocksource: {fields['clocksource'][0]}",
              f"# memory.max: {fields['memory.max'][0]}",
              f"# swap: {' '.join(fields.get('swap', ['none']))}",
              *(f"# vmstat before: {v}" for v in fields.get("vmstat-before", [])),
              *(f"# vmstat after: {v}" for v in fields.get("vmstat-after", [])),
              f"# host wall time: {wall:.1f} s (boot, workload, trace transfer)",
              *(f"# boot {i} crashed before the workload, booted again: {c}" for i, c in enumerate(crashes, 1))]
    return "\n".join(lines) + "\n"


def capture(name: str, out: Path, ncpu: int, workload: list[str], memory_max: str, cache: Path, timeout: float,
            package: str | None) -> tuple[Path, Path]:
    if workload[0] not in PROGRAMS:
        raise Failure(f"workload: unknown program {workload[0]!r}; known: {', '.join(PROGRAMS)}")
    ensure_packages()
    cache.mkdir(parents=True, exist_ok=True)
    vmlinuz, modules, kernel = fetch_kernel(cache, package)
    # A folder per run, so that runs side by side cannot mix their guests; kept when the run fails.
    work = Path(tempfile.mkdtemp(prefix=f"guest-{name}.", dir=cache))
    command = shlex.join(workload)
    initrd = build_initrd(work, modules, command, memory_max, ncpu)
    crashes: list[str] = []
    while True:
        text, wall = boot(work, vmlinuz, initrd, ncpu, timeout)
        crash = boot_crash(work / "console.log", text)
        if crash is None or len(crashes) == BOOT_ATTEMPTS - 1:
            break
        crashes.append(crash)
        (work / "console.log").rename(work / f"console-{len(crashes)}.log")
        print(f"the guest kernel crashed before the workload ({crash}); booting it again", file=sys.stderr)
    fields, trace = parse_guest(text, work / "console.log")
    qemu = run(["qemu-system-x86_64", "--version"], "qemu-system-x86_64 --version").stdout.splitlines()[0]
    for error in fields.get("error", []):
        raise Failure(f"in the guest: {error}; its console is {work / 'console.log'}")
    if fields.get("status") != ["0"]:
        said = fields.get("output", ["(no output)"])[-1]
        raise Failure(f"the workload failed in the guest (exit status {fields.get('status', ['?'])[0]}): {said}")
    if len(fields.get("cpu", [])) != ncpu:
        raise Failure(f"asked for {ncpu} vCPUs, the guest has {len(fields.get('cpu', []))}")
    trace_path = out / f"{name}.trace.xz"
    with published(trace_path) as tmp:
        tmp.write_bytes(lzma.compress(trace, preset=9))
    meta = sidecar_for(trace_path)
    with published(meta) as tmp:
        tmp.write_text(sidecar_text(fields, command, ncpu, kernel, qemu, wall, crashes))
    shutil.rmtree(work)
    return trace_path, meta


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is the workload's command line, untouched by our options.
    cut = argv.index("--") if "--" in argv else len(argv)
    argv, workload = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(usage="%(prog)s NAME --cpus N [options] -- PROGRAM ARGS...",
                                 description=__doc__.split("\n\n")[0], epilog="PROGRAM: tlbstorm THREADS PAGES "
                                 "ITERATIONS, or reclaim THREADS MB [PASSES]. See the module doc for details.")
    ap.add_argument("name", help="output files are NAME.trace.xz and NAME.meta")
    ap.add_argument("--cpus", type=int, required=True, help="virtual CPUs (1-64)")
    ap.add_argument("--memory-max", default="max", help="the workload cgroup's memory.max, e.g. 100M (default max)")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for the two files (default .)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ipilab-realkernel",
                    help="kernel package and guest build (default ~/.cache/ipilab-realkernel)")
    ap.add_argument("--kernel-package", help="e.g. linux-image-6.12.95+deb12-cloud-amd64 (default: newest cached, "
                                             "else newest in bookworm-backports)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the guest is stopped (default 3600)")
    args = ap.parse_args(argv)
    prog = Path(sys.argv[0]).name
    try:
        if not 1 <= args.cpus <= 64:
            raise Failure(f"--cpus {args.cpus}: must be 1-64")
        if not workload:
            raise Failure("no workload: give -- tlbstorm THREADS PAGES ITERATIONS or -- reclaim THREADS MB")
        if not re.fullmatch(r"max|\d+[KMG]?", args.memory_max):
            raise Failure(f"--memory-max {args.memory_max}: must be max or a size such as 100M")
        if not args.out.is_dir():
            raise Failure(f"--out {args.out}: no such folder")
        trace, meta = capture(args.name, args.out, args.cpus, workload, args.memory_max, args.cache, args.timeout,
                              args.kernel_package)
    except Failure as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {trace} ({trace.stat().st_size:,} bytes) and {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
