"""A statistical profiler for a gevent process: `python _sampler.py OUT -m module args...`.

cProfile charges a greenlet's waiting to whatever function switched away, so under gevent
its times mislead. This samples instead: every millisecond of CPU time (ITIMER_PROF) the
signal handler records the running Python stack, whichever greenlet it belongs to. At
exit OUT gets the stacks with their sample counts (one "a;b;c N" line each, the format
flame-graph tools read) and OUT.top the functions by self and by inclusive samples.
SIGUSR1 discards what was sampled so far (start-up, warm-up): the profile is then of the
steady state alone.
"""
from __future__ import annotations

import atexit
import collections
import runpy
import signal
import sys

out_path = sys.argv[1]
stacks: collections.Counter = collections.Counter()


def _sample(signum, frame):
    names = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}")
        frame = frame.f_back
    stacks[";".join(reversed(names))] += 1


def _reset(signum, frame):
    stacks.clear()


def _dump():
    signal.setitimer(signal.ITIMER_PROF, 0)
    total = sum(stacks.values()) or 1
    with open(out_path, "w") as f:
        for stack, n in stacks.most_common():
            f.write(f"{stack} {n}\n")
    own, incl = collections.Counter(), collections.Counter()
    for stack, n in stacks.items():
        parts = stack.split(";")
        own[parts[-1]] += n
        for name in set(parts):
            incl[name] += n
    with open(out_path + ".top", "w") as f:
        f.write(f"{total} samples of 1 ms CPU\n\nself:\n")
        for name, n in own.most_common(60):
            f.write(f"{100 * n / total:6.1f}% {name}\n")
        f.write("\ninclusive:\n")
        for name, n in incl.most_common(120):
            f.write(f"{100 * n / total:6.1f}% {name}\n")


atexit.register(_dump)
signal.signal(signal.SIGPROF, _sample)
signal.signal(signal.SIGUSR1, _reset)
signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
if sys.argv[2] != "-m":
    raise SystemExit("usage: _sampler.py OUT -m module [args...]")
sys.argv = [sys.argv[3]] + sys.argv[4:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
