"""process_* of every process of `wallet serve --workers N`, each sample labelled with its
``pid``.

In prometheus_client's multi-process mode the registry a scrape sees is rebuilt from the
workers' files, and its ProcessCollector is left out: it reads /proc/self, which would be
whichever worker answered. So the worker that answers a scrape reads the gunicorn master
(its parent) and every child of the master (the workers) through ProcessCollector(pid=...)
and labels each sample with the pid it was read from: sum by instance for the service's
memory and CPU. A worker that gunicorn replaced is gone from the next scrape; its CPU time
goes with it (rate() over a new pid starts afresh). Linux only, as ProcessCollector is.
"""

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_PROC = Path("/proc")


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it has just exited
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return sorted(found)


def _process_families(pid: int) -> Iterable[Metric]:
    return ProcessCollector(pid=lambda: pid, registry=None).collect()


class ServiceProcesses(Collector):
    """process_* of the gunicorn master and each of its workers, by ``pid``; called in a
    worker (the master is its parent)."""

    def collect(self) -> Iterator[Metric]:
        master = os.getppid()
        merged: dict[str, Metric] = {}
        for pid in [master, *_children(master)]:
            for family in _process_families(pid):
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()
