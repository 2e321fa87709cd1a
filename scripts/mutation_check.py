#!/usr/bin/env python
"""Mutation check: do the tests fail when a core behaviour breaks?

Each named mutation below is one deliberate bug: exact search/replace edits of one or more files.
For each, the repository is copied to a scratch dir, the edits are applied (a pattern that no longer
matches exactly once stops the script: update the list with the code, so it stays honest), and the
tests that cover that code run there (`-m "not slow and not slurm"`). A mutation is KILLED when at
least one of them fails, and SURVIVED when they all pass. A baseline run of every selection on the
unmutated copy comes first: a selection that fails without a bug kills nothing.

Not part of CI (minutes per mutation on two cores). Run before a release and quote the result with
its date in docs/testing.md:

    nice -n 10 python scripts/mutation_check.py            # all of them
    nice -n 10 python scripts/mutation_check.py --list
    nice -n 10 python scripts/mutation_check.py --only bptt_steps,t2_zero_accepted

The native kernel is rebuilt from its (mutated) sources in a scratch EQPROP_KERNEL_CACHE, never in
the user's cache. Exit code: 0 when every mutation is killed, 1 when one survived, 2 on a stale
pattern or a failing baseline.
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
MARKERS = "not slow and not slurm"
SHOW_FAILED = 6  # test ids listed per killed mutation


@dataclass
class Mutation:
    name: str
    what: str                              # the bug, in words
    edits: List[Tuple[str, str, str]]      # (file, exact text, replacement); each text must occur once
    tests: List[str]                       # pytest selections (node ids or files; "-k expr" allowed)


MUTATIONS = [
    # ----- the seven of issue 18's table -----
    Mutation("random_sign_always_plus", "the random-sign estimator always draws +1",
             [("eqprop/estimators/random_sign.py",
               "return 1.0 if torch.randint(0, 2, (1,), generator=generator).item() else -1.0", "return 1.0")],
             ["tests/test_ep_theorem.py",
              "tests/test_training_run.py::test_resume_continues_and_matches_an_uninterrupted_run"]),
    Mutation("bptt_steps", "BPTT back-propagates T2 - 1 steps (head T1 - T2 + 1)",
             [("eqprop/estimators/bptt.py", "dyn.T1 - dyn.T2, dyn=", "dyn.T1 - dyn.T2 + 1, dyn="),
              ("eqprop/estimators/bptt.py", "[s.detach() for s in head.state], dyn.T2)",
               "[s.detach() for s in head.state], dyn.T2 - 1)")],
             ["tests/test_ep_theorem.py"]),
    Mutation("first_lr_everywhere", "every layer gets the first learning rate",
             [("eqprop/optim.py", '{"params": g, "lr": lr,', '{"params": g, "lr": lrs[0],')],
             ["tests/test_optim.py"]),
    Mutation("dropout_rng_not_resumed", "dropout masks' RNG not restored on a mid-epoch resume",
             [("eqprop/checkpointer.py", 'torch.set_rng_state(partial["torch_rng"])', "pass")],
             ["tests/test_reliability_faults.py::test_signal_saves_mid_epoch_and_resume_is_exact -k dropout"]),
    Mutation("t2_zero_accepted", "dynamics.T2=0 accepted",
             [("eqprop/dynamics.py", "if not self.T2 > 0:", "if not self.T2 >= 0:")],
             ["tests/test_reliability_validation.py -k T2"]),
    Mutation("gdu_sign_error_inverted", "the GDU sign error counts agreements (> instead of <)",
             [("eqprop/gdu.py", "(e * b < 0)", "(e * b > 0)")],
             ["tests/test_gdu_compare.py"]),
    Mutation("mnist5k_overlap", "500 mnist5k test images inside the 4,000 training images",
             [("eqprop/tasks/offline.py", "TensorDataset(x[n_train:], y[n_train:])",
               "TensorDataset(x[n_train - 500:len(x) - 500], y[n_train - 500:len(y) - 500])")],
             ["tests/test_offline_tasks.py"]),
    # ----- others worth guarding -----
    Mutation("symmetric_full_difference", "symmetric EP divides the +-beta difference by beta, not 2 beta",
             [("eqprop/estimators/symmetric.py", "ep_grads(x, y, plus, minus, 2 * self.beta, send=send)",
               "ep_grads(x, y, plus, minus, self.beta, send=send)")],
             ["tests/test_ep_theorem.py"]),
    Mutation("readout_nudge_without_softmax", "the nudge through the read-out leaves out its softmax",
             [("eqprop/losses.py", "readout.feedback(self.grad_at(readout.drive(last)[0], target), readout_ctx)",
               "readout.feedback(readout.drive(last)[0] - target, readout_ctx)")],
             ["tests/test_dynamics_step.py", "tests/test_ep_theorem.py"]),
    Mutation("kernel_drops_bias", "the C kernel leaves the bias out of the hidden layers' drive",
             [("eqprop/kernels/dense_relax_body.h", "const REAL bi = bias ? bias[i] : (REAL)0;",
               "const REAL bi = (REAL)0;")],
             ["tests/test_native_kernel.py"]),
    Mutation("cosine_schedule_twice_as_long", "the cosine schedule anneals over 2 T_max epochs",
             [("eqprop/optim.py", "CosineAnnealingLR(opt, T_max=cfg.T_max,",
               "CosineAnnealingLR(opt, T_max=2 * cfg.T_max,")],
             ["tests/test_optim.py"]),
    Mutation("gradient_ascent", "the optimiser steps up the estimated gradient",
             [("eqprop/engine.py", "p.grad = est.grads[p]", "p.grad = -est.grads[p]")],
             ["tests/test_config_groups.py -k 'every_combination and mlp and digits and not vf and cel'"]),
    Mutation("checkpoint_not_atomic", "checkpoints written in place (a kill tears them)",
             [("eqprop/checkpoint.py",
               'fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)',
               "fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), str(path)")],
             ["tests/test_reliability_faults.py::test_kill_9_during_a_checkpoint_save_loses_nothing"]),
    Mutation("wandb_test_acc_key", "W&B gets the test accuracy under another key",
             [("eqprop/loggers/wandb_logger.py", '"test/acc": metrics["test_acc"]', '"test_acc": metrics["test_acc"]')],
             ["tests/test_wandb.py::test_training_logs_config_history_summary_group_and_a_requeue_continues_the_run"]),
    Mutation("report_population_std", "the report's ± is the population std, not the sample std over seeds",
             [("eqprop/report/markdown.py", "{100 * statistics.stdev(values):.2f}", "{100 * statistics.pstdev(values):.2f}")],
             ["tests/test_report.py"]),
]

IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "outputs", "multirun", "wandb",
                                ".venv", "*.egg-info")


def copy_repo(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=IGNORE)
    return dest


def apply(repo: Path, m: Mutation) -> None:
    """Each edit's text must occur exactly once in its file, else the list is stale: stop loudly."""
    for rel, old, new in m.edits:
        path = repo / rel
        text = path.read_text()
        n = text.count(old)
        if n != 1:
            print(f"[mutation] {m.name}: {rel} holds {n} copies of {old!r} (expected exactly 1): "
                  "the code changed; update MUTATIONS in scripts/mutation_check.py", file=sys.stderr)
            raise SystemExit(2)
        path.write_text(text.replace(old, new))


def run_tests(repo: Path, selections: List[str], cache: Path, timeout: float) -> Tuple[bool, List[str], str]:
    """(all passed, failed test ids, output tail): one pytest run per selection (a `-k` belongs to
    its own selection), in `repo`, stopping at the first selection that fails."""
    env = dict(os.environ, PYTHONPATH=str(repo), WANDB_MODE="offline", EQPROP_KERNEL_CACHE=str(cache),
               PYTHONDONTWRITEBYTECODE="1")
    for sel in selections:
        cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-m", MARKERS] + shlex.split(sel)
        # its own process group: a timeout or Ctrl-C ends the launch.py processes the tests start, too
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except BaseException as err:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            return False, [f"TIMEOUT after {timeout:.0f} s: {sel}"], out[-2000:]
        if proc.returncode == 5:  # nothing collected: the selection is stale
            return False, [f"NO TESTS COLLECTED: {sel}"], out[-2000:]
        if proc.returncode != 0:
            failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, flags=re.M)))
            return False, failed, out[-2000:]
    return True, [], ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated mutation names")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selections")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per pytest run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--show", action="store_true", help="print the end of pytest's output for each mutation")
    a = ap.parse_args(argv)
    chosen = MUTATIONS
    if a.only:
        names = a.only.split(",")
        unknown = [n for n in names if n not in {m.name for m in MUTATIONS}]
        if unknown:
            raise SystemExit(f"[mutation] unknown mutation(s) {unknown}; --list shows them")
        chosen = [m for m in MUTATIONS if m.name in names]
    if a.list:
        for m in chosen:
            print(f"{m.name:32s} {m.what}\n{'':32s} tests: {' '.join(m.tests)}")
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="eqprop-mutation-"))
    cache = scratch / "kernel-cache"
    try:
        # every pattern is checked before anything runs: a stale list fails in seconds
        for m in chosen:
            apply(copy_repo(scratch / f"check-{m.name}"), m)
            shutil.rmtree(scratch / f"check-{m.name}")
        if not a.no_baseline:
            base = copy_repo(scratch / "baseline")
            sels = list(dict.fromkeys(s for m in chosen for s in m.tests))
            t0 = time.monotonic()
            ok, failed, tail = run_tests(base, sels, cache / "baseline", a.timeout)
            print(f"[mutation] baseline ({len(sels)} selections, {time.monotonic() - t0:.0f} s): "
                  f"{'pass' if ok else 'FAIL ' + ', '.join(failed)}", flush=True)
            if not ok:
                print(tail)
                return 2
            shutil.rmtree(base)
        survived = []
        for m in chosen:
            repo = copy_repo(scratch / m.name)
            apply(repo, m)
            t0 = time.monotonic()
            ok, failed, tail = run_tests(repo, m.tests, cache / m.name, a.timeout)
            took = time.monotonic() - t0
            if ok:
                survived.append(m.name)
                print(f"[mutation] SURVIVED {m.name} ({m.what}) [{took:.0f} s]", flush=True)
            else:
                print(f"[mutation] killed   {m.name} ({m.what}) [{took:.0f} s] by:", flush=True)
                shown = failed[:SHOW_FAILED] or ["(pytest failed without a test id)"]
                if len(failed) > SHOW_FAILED:
                    shown.append(f"... and {len(failed) - SHOW_FAILED} more")
                for t in shown:
                    print(f"             {t}", flush=True)
            if a.show or not failed:
                print(tail, flush=True)
            shutil.rmtree(repo)
        print(f"[mutation] {len(chosen) - len(survived)}/{len(chosen)} killed"
              + (f"; SURVIVED: {', '.join(survived)}" if survived else ""))
        return 1 if survived else 0
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
