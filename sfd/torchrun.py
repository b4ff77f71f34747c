"""torchrun that ends a failed run with the worker's own message: ``python -m sfd.torchrun [torchrun options] SCRIPT``.

torchrun (torch.distributed.run) lets ChildFailedError escape when a worker exits nonzero, so after the worker's own
``error: ...`` line the terminal shows torchrun's traceback and a ~30-line failure table, and torchrun exits 1
whatever the worker's code was. Here that exception becomes one line and the worker's exit code. Nothing the
workers print is touched: their stdout and stderr go straight to the terminal (torchrun redirects nothing by
default), so a worker's traceback from a real bug is still shown in full. torchrun's own errors (a rendezvous that
fails, a bad option) keep their tracebacks too.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Sequence

from torch.distributed import run as torch_run
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


class _WithoutFailureLine(logging.Filter):
    """Drops torchrun's "failed (exitcode: 2) local_rank: 0 (pid: ...) of binary: ..." log line, which our one
    line replaces; every other message of that logger (closing signals, stuck workers) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("failed (exitcode")


def exit_code(exitcode: int) -> int:
    """A worker's exit status as a shell reports it: its code, or 128 + N when signal N killed it (torch gives -N)."""
    return 128 - exitcode if exitcode < 0 else exitcode


def failure_line(error: ChildFailedError) -> str:
    """One line for a failed run: how many workers failed, and the first one's rank and exit code or signal."""
    rank, first = error.get_first_failure()
    how = f"signal {first.signal_name()}" if first.exitcode < 0 else f"exit code {first.exitcode}"
    count = len(error.failures)
    if count == 1:
        return f"error: worker rank {rank} failed ({how})"
    return f"error: {count} workers failed, first rank {rank} ({how})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run torchrun with ``argv`` (default: sys.argv[1:]); the workers' exit status, or 128 + N on signal N."""
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_WithoutFailureLine())
    try:
        # torchrun's own main, not run(): its @record decorator copies the failed worker's error file to the
        # launcher's (TORCHELASTIC_ERROR_FILE, read by schedulers) before re-raising; it prints nothing itself.
        torch_run.main(None if argv is None else list(argv))
    except ChildFailedError as error:
        print(failure_line(error), file=sys.stderr, flush=True)
        return exit_code(error.get_first_failure()[1].exitcode) or 1
    except SignalException as error:  # Ctrl-C or a scheduler's SIGTERM: the workers are already stopped
        print(f"error: stopped by {signal.Signals(error.sigval).name}", file=sys.stderr, flush=True)
        return 128 + int(error.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
