"""What a process costs (from /proc) and what machine a result came from.

CPU is read as utime+stime of the whole process tree (nginx's master and worker; the
gateway and any helper process it forks), in clock ticks. Ticks are coarse (10 ms),
which is why the runs last seconds: 5 s at 40k req/s is ~200k requests, so one tick is
well under 1% of the total.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin(pids: list[int], cores: set[int]) -> None:
    """Every thread of `pids` onto `cores` (threads they start later inherit it)."""
    for pid in pids:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue  # exited
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cores)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children[ppid].append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes (all their threads), in clock ticks."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may contain spaces: state is [0],
        # utime [11] and stime [12] (fields 14 and 15 of proc(5)).
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_ns(pids: list[int]) -> int | None:
    """CPU time of these processes in nanoseconds, from per-thread schedstat.

    For short measurements (a few hundred streams) where 10 ms ticks are too coarse.
    None where the kernel has no schedstat. Threads that exit take their time with
    them, which is fine for the long-lived threads of the proxies measured here.
    """
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:
                if not Path(f"/proc/{pid}/schedstat").exists():
                    return None
            except (OSError, ValueError, IndexError):
                continue
    return total


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes (VmRSS), summed."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _command_output(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # nginx -v writes to stderr, the rest to stdout; wrk adds its usage after line one.
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def git_state(repo: Path) -> tuple[str, bool | None]:
    """HEAD and whether tracked files differ from it (then the numbers may not match HEAD).

    Recorded as two fields, `git_commit` and `dirty`, so the docs generator can say
    "(uncommitted changes)" instead of quoting a commit the run did not measure; `dirty`
    is None when git cannot tell (no repository, no git).
    """
    head = _command_output(["git", "rev-parse", "HEAD"], repo)
    if not head:
        return "unknown", None
    dirty = _command_output(["git", "status", "--porcelain", "--untracked-files=no"], repo)
    return head, bool(dirty)


def machine_info(repo: Path, gateway_python: str, tools: dict[str, str]) -> dict[str, object]:
    """Everything needed to judge whether two result files are comparable."""
    commit, dirty = git_state(repo)
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gateway_python": _command_output([gateway_python, "--version"]),
        "loadavg_at_start": list(os.getloadavg()),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([sys.argv[0], *sys.argv[1:]]),
        "git_commit": commit,
        "dirty": dirty,
        "tools": {
            name: _command_output([path, "-v" if name == "nginx" else "--version"])
            for name, path in tools.items()
        },
    }
