"""Stopping a run cleanly: SIGTERM / SIGINT / SIGUSR1 become a request checked at batch boundaries."""
import signal


class Interrupted(RuntimeError):
    """A run stopped by a signal (after saving its checkpoint, unless Ctrl-C came twice)."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum = signum
        self.exit_code = 128 + signum


class SignalFlag:
    """SIGTERM / SIGINT / SIGUSR1 ask for a checkpoint at the next batch boundary. A second SIGINT
    (Ctrl-C twice) stops at once, keeping the last checkpoint; repeated SIGTERMs do not, because
    SLURM may deliver one per process of the job step and the checkpoint must still be written."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, run_dir=None):
        self.signum = None
        self.run_dir = run_dir
        self._old = {}

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise Interrupted(signum, f"at once (Ctrl-C twice): work since the last checkpoint in {self.run_dir} "
                              "is lost; rerun with resume=<run dir> to continue from it")
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
