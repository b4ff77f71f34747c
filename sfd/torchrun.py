"""torchrun that ends a failed run with the worker's own message: ``python -m sfd.torchrun [torchrun options] SCRIPT``.

torchrun (torch.distributed.run) lets ChildFailedError escape when a worker exits nonzero, so after the worker's own
``error: ...`` line the terminal shows torchrun's traceback and a ~30-line failure table, and torchrun exits 1
whatever the worker's code was. Here that exception becomes one line and the worker's exit code. Nothing the
workers print is touched: their stdout and stderr go straight to the terminal (torchrun redirects nothing by
default), so a worker's traceback from a real bug is still shown in full. torchrun's own errors (a rendezvous that
fails, a bad option) keep their tracebacks too.

torch elastic restarts the worker group after any failure, up to --max-restarts times. A worker exiting with a
code of NOT_RETRIED (bad input, a run that cannot continue) would fail the same way on every restart, so here it
ends the run at once, with its one line, instead of repeating it max-restarts + 1 times.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Sequence

from torch.distributed import run as torch_run
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher import api as launcher_api

# Exit codes that a restart would only repeat: 2, bad input (a config error, a missing or corrupt file; also
# argparse's usage error), and 3, a run that cannot continue (scripts/train.py's TrainingError: a non-finite loss,
# a batch larger than the dataset).
NOT_RETRIED = frozenset({2, 3})


class NoRetryAgent(LocalElasticAgent):
    """torchrun's agent, except that a failure with an exit code of NOT_RETRIED leaves no restarts.

    Each node's agent decides by itself. That suffices: a config error and a non-finite loss (the loss is all-reduced
    before the check) fail every rank alike, and an agent that ends this way closes the rendezvous, so the other
    nodes' agents end at their next rendezvous instead of waiting for this node.
    """

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        result = super()._monitor_workers(worker_group)
        # _invoke_run restarts the group while _remaining_restarts > 0; at 0 it stops the workers and returns the
        # failure, which launch_agent raises as ChildFailedError (torch has no option or hook for this choice).
        if result.is_failed() and any(failure.exitcode in NOT_RETRIED for failure in result.failures.values()):
            self._remaining_restarts = 0
        return result


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
    launcher_api.LocalElasticAgent = NoRetryAgent  # the class launch_agent instantiates, looked up when called
    # Restarted workers must not meet their predecessors' keys. When the workers share the agent's rendezvous store
    # (torch's default for c10d), the process group's keys are not namespaced per attempt, so a restarted rank can
    # read a dead rank's address and fail to connect ("Gloo connectFullMesh failed … Connection refused"; seen in
    # tests/test_train.py's killed-worker run). Unshared, rank 0 of each attempt hosts a fresh store on a fresh port.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
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
