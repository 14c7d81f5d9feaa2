"""The kernel's CPU list format (`0-3,8,10-11`), as sysfs, the kernel command line and our options write it."""

from __future__ import annotations

from ipilab.validation import ConfigError


class CpuListError(ConfigError):
    """Not a CPU list, or CPUs outside the machine; the message names the field."""


def parse_cpulist(text: str, ncpus: int, field: str) -> list[int]:
    """`all`, or a kernel cpulist such as `0-3,8,10-11`, checked against the machine."""
    if text.strip() == "all":
        return list(range(ncpus))
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last >= ncpus:  # before the range is built: `0-99999999999999` must not fill the memory
                raise CpuListError(f"field {field}: CPU(s) {last} outside the machine's CPUs 0-{ncpus - 1}")
            cpus.update(range(first, last + 1))
    except ValueError as e:
        if isinstance(e, CpuListError):
            raise
        raise CpuListError(f"field {field}: {text!r} is not a CPU list like 0-3,8") from None
    bad = sorted(c for c in cpus if not 0 <= c < ncpus)
    if bad or not cpus:
        shown = ",".join(map(str, bad[:4])) + (",..." if len(bad) > 4 else "") if bad else text
        raise CpuListError(f"field {field}: CPU(s) {shown} outside the machine's CPUs 0-{ncpus - 1}")
    return sorted(cpus)
