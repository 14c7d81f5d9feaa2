"""The capture sidecar's machine facts, without root: gathered from a small made-up sysfs whose answers are
worked out by hand, written and read back, and read from the QEMU harness's layout and from sidecars that
predate the facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import SHARED_TRACES

from ipilab.trace.capture import machine_facts
from ipilab.trace.sidecar import CpuPlace, MachineFacts, read_machine_facts, read_sidecar

ROWS = """# before:
#   CAL:        100        200   Function call interrupts
# after:
#   CAL:        150        260   Function call interrupts
# lost: overrun: 0
"""


def fake_machine(root: Path) -> tuple[Path, Path]:
    """Two sockets of two cores with two threads each, numbered as Intel does (CPU i and i+4 share a core),
    one NUMA node per socket; CPU 7 is offline (its topology still there, as after `echo 0 > online`)."""
    sysfs, proc = root / "sys", root / "proc"
    cpu_dir = sysfs / "devices/system/cpu"
    for cpu in range(8):
        topo = cpu_dir / f"cpu{cpu}/topology"
        topo.mkdir(parents=True)
        first = cpu % 4
        (topo / "physical_package_id").write_text(f"{first // 2}\n")
        (topo / "core_id").write_text(f"{first % 2}\n")
        # The offline CPU 7 has left its sibling's mask.
        (topo / "thread_siblings_list").write_text("3\n" if cpu == 3 else f"{first},{first + 4}\n")
    (cpu_dir / "online").write_text("0-6\n")
    (cpu_dir / "cpuidle").mkdir()
    (cpu_dir / "cpuidle/current_driver").write_text("intel_idle\n")
    clock = sysfs / "devices/system/clocksource/clocksource0"
    clock.mkdir(parents=True)
    (clock / "current_clocksource").write_text("tsc\n")
    for node, cpus in ((0, "0-1,4-5"), (1, "2-3,6")):
        (sysfs / f"devices/system/node/node{node}").mkdir(parents=True)
        (sysfs / f"devices/system/node/node{node}/cpulist").write_text(cpus + "\n")
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text("6.12.9-test\n")
    (proc / "cmdline").write_text("root=/dev/vda isolcpus=2-3,6 quiet\n")
    return sysfs, proc


def test_facts_of_a_two_socket_smt_machine_worked_out_by_hand(tmp_path: Path) -> None:
    sysfs, proc = fake_machine(tmp_path)
    facts = machine_facts(sysfs, proc, trace_clock="local", events=("csd:csd_queue_cpu",),
                          events_missing=("syscalls:sys_enter_madvise",))
    # 7 online CPUs: sockets {0, 1}; cores {0+4, 1+5} on socket 0 and {2+6, 3} on socket 1.
    assert facts.sockets == 2 and facts.cores == 4 and facts.threads_per_core == 2 and facts.numa_nodes == 2
    assert facts.cpus[5] == CpuPlace(cpu=5, package=0, core=1, siblings=(1, 5), node=0)
    assert facts.cpus[3] == CpuPlace(cpu=3, package=1, core=1, siblings=(3,), node=1)
    assert [c.cpu for c in facts.cpus] == list(range(7))
    assert (facts.kernel, facts.cmdline, facts.cpuidle_driver, facts.clocksource) == (
        "6.12.9-test", "root=/dev/vda isolcpus=2-3,6 quiet", "intel_idle", "tsc")


def test_facts_round_trip_through_a_sidecar_the_old_reader_still_reads(tmp_path: Path) -> None:
    sysfs, proc = fake_machine(tmp_path)
    facts = machine_facts(sysfs, proc, trace_clock="mono", events=("csd:csd_queue_cpu", "ipi:ipi_send_cpu"),
                          events_missing=("exceptions:page_fault_user",))
    meta = tmp_path / "run.meta"
    meta.write_text("# command: true\n" + "\n".join(facts.meta_lines()) + "\n" + ROWS)
    assert read_machine_facts(meta) == dataclasses.replace(facts, command="true")
    side = read_sidecar(meta)
    assert side is not None and side.deltas == {"CAL": [50, 60]} and side.lost == 0
    assert "# sockets: 2" in meta.read_text() and "# cpu 4: package 0 core 0 siblings 0,4 node 0" in meta.read_text()


def test_what_a_machine_does_not_say_is_left_out_not_guessed(tmp_path: Path) -> None:
    """No cpuidle, no NUMA directory, no clocksource: those facts are None and not written."""
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    (sysfs / "devices/system/cpu/cpu0/topology").mkdir(parents=True)
    for name, value in (("physical_package_id", "0"), ("core_id", "0"), ("thread_siblings_list", "0")):
        (sysfs / f"devices/system/cpu/cpu0/topology/{name}").write_text(value + "\n")
    (sysfs / "devices/system/cpu/online").write_text("0\n")
    facts = machine_facts(sysfs, proc)
    assert facts == MachineFacts(cpus=(CpuPlace(0, 0, 0, (0,), None),))
    assert facts.sockets == 1 and facts.cores == 1
    assert not any(line.startswith(("# cpuidle", "# clocksource", "# numa", "# kernel")) for line in facts.meta_lines())


def test_the_qemu_harness_layout_reads(tmp_path: Path) -> None:
    meta = tmp_path / "h.meta"
    meta.write_text("# machine: QEMU TCG q35, 4 vCPUs\n# command: tlbstorm 4 200\n"
                    "# === UNAME 6.12.48+deb12-cloud-amd64\n"
                    + "".join(f"# === CPU {c} package 0 core {c} siblings {c}\n" for c in range(4))
                    + "# === BEFORE\n" + ROWS.replace("# before:\n", "").replace("# after:\n", "# === AFTER\n"))
    facts = read_machine_facts(meta)
    assert facts is not None and facts.kernel == "6.12.48+deb12-cloud-amd64"
    assert facts.sockets == 1 and facts.cores == 4 and facts.threads_per_core == 1 and facts.numa_nodes is None
    assert read_sidecar(meta).deltas == {"CAL": [50, 60]}


@pytest.mark.skipif(not (SHARED_TRACES / "qemu4-reclaim-4x40.meta").exists(), reason=f"no sidecars in {SHARED_TRACES}")
def test_a_sidecar_from_before_the_facts_gives_none_of_them() -> None:
    facts = read_machine_facts(SHARED_TRACES / "qemu4-reclaim-4x40.meta")
    # Only what such a sidecar always had: the machine in words and the command.
    assert facts == MachineFacts(machine="QEMU TCG q35, 4 vCPUs, 1.5 GB, Debian linux-image 6.12 cloud kernel, zram "
                                 "swap 768 MB, memory.max 100M", command="usemem 4 40")
    assert facts.sockets is None and read_machine_facts(SHARED_TRACES / "no-such.meta") is None
