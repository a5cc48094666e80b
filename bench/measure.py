"""Run one command and measure it: wall seconds and peak RSS, from ``os.wait4``.

Each measured command is its own process (a shell for pipelines), so the peak RSS the
kernel reports for it is that process's, or for a pipeline the largest of its members'
(the kernel folds waited-for children into ``ru_maxrss`` as a maximum). It is launched
through ``/usr/bin/time``: a child forked from this Python process would start out with
this process's RSS (about 20 MB) as its high-water mark, hiding small tools' real figure.
Output files are removed and dirty pages written back *before* each run, outside the timed
span, so one run's writeback does not land in the next one's time.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

#: GNU time (Debian package ``time``), used only to read a clean peak RSS; without it the
#: RSS comes from ``os.wait4`` and is at least this Python process's size (see run_once).
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass
class Command:
    """One contender: a name, an argv (or a shell line), and what it writes."""

    name: str
    argv: list[str] | str
    outputs: tuple[str, ...] = ()
    cwd: str | None = None
    env: dict[str, str] | None = None
    prepare: object = None  # callable run before each (untimed) run, e.g. to recreate a dir
    timeout: float = 1800.0  # seconds; the whole process group is killed after that

    @property
    def shell(self) -> bool:
        return isinstance(self.argv, str)


@dataclass
class Sample:
    seconds: float
    rss_kb: int


@dataclass
class Result:
    name: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    @property
    def seconds(self) -> float | None:
        return statistics.median(s.seconds for s in self.samples) if self.ok else None

    @property
    def rss_mb(self) -> float | None:
        return max(s.rss_kb for s in self.samples) / 1024 if self.ok else None

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": self.seconds, "rss_mb": self.rss_mb,
                "runs": [s.seconds for s in self.samples], "error": self.error}


def clear(paths: tuple[str, ...]) -> None:
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)


def run_once(cmd: Command, log_path: str) -> Sample:
    """Run ``cmd`` once; raise RuntimeError with its stderr tail when it fails."""
    clear(cmd.outputs)
    if callable(cmd.prepare):
        cmd.prepare()
    os.sync()
    env = None
    if cmd.env:
        env = {**os.environ, **cmd.env}
    argv = ["/bin/bash", "-c", cmd.argv] if cmd.shell else list(cmd.argv)
    rss_file = log_path + ".rss"
    if TIME:
        # /usr/bin/time is a small C program: the RSS its child starts with is its own
        # (about 2 MB), not this Python process's, which a fork from here would pass on.
        argv = [TIME, "-f", "%M", "-o", rss_file, *argv]
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cmd.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timer = threading.Timer(cmd.timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode == -9 and elapsed >= cmd.timeout:
        raise RuntimeError(f"timed out after {cmd.timeout:.0f} s")
    if proc.returncode != 0:
        with open(log_path, "rb") as f:
            tail = f.read().decode(errors="replace").strip().splitlines()[-12:]
        raise RuntimeError(f"exit status {proc.returncode}: " + "\n    ".join(tail))
    rss_kb = usage.ru_maxrss
    if TIME:
        try:
            with open(rss_file) as f:
                rss_kb = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
    return Sample(elapsed, rss_kb)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def measure(cmds: list[Command], runs: int, logdir: str, *,
            keep_outputs: bool = False) -> dict[str, Result]:
    """Run every command ``runs`` times, interleaved (A B C A B C ...), so that the machine's
    slow moments are shared out instead of falling on one contender. The first failure of a
    command drops it from later rounds. The last run's outputs are kept with
    ``keep_outputs`` (for looking at their sizes), else removed."""
    results = {c.name: Result(c.name) for c in cmds}
    for _ in range(runs):
        for c in cmds:
            r = results[c.name]
            if r.error:
                continue
            log = os.path.join(logdir, f"{_slug(c.name)}.log")
            try:
                r.samples.append(run_once(c, log))
            except (RuntimeError, OSError) as exc:
                r.error = str(exc)
    if not keep_outputs:
        for c in cmds:
            clear(c.outputs)
    return results


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)[:60]
