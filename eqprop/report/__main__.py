"""`python -m eqprop.report <sweep or run dir> [...] [--out DIR]`: prints where the report went."""
import argparse
import sys
from pathlib import Path

import eqprop.report
from eqprop.report import ReportError, make_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eqprop.report", description=eqprop.report.__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="sweep dirs (results/multirun/...) or run dirs")
    p.add_argument("--out", type=Path, default=None, help="where report.md and report.png go (default: the first dir)")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"[eqprop] error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        result = make_report(args.dirs, args.out or args.dirs[0])
    except ReportError as err:
        print(f"[eqprop] error: {err}", file=sys.stderr)
        return 2
    n_failed = sum(1 for r in result["runs"] if r.problem)
    print(f"[eqprop] report of {len(result['runs'])} runs ({n_failed} failed): {result['md']}, {result['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
