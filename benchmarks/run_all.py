"""Run every ``benchmarks/bench_*.py`` script and print one table per result (``make bench``).

Each script runs in its own process and writes ``benchmarks/results/<name>.json``; this script
then reads those files back and prints them. Options are passed on to the scripts that accept
them (``--device``, ``--size``); ``--quick`` runs only the scripts that have a quick mode, in
that mode, and writes their results to a temporary folder so that full results are kept.

Child processes get mri2mri's thread policy (``mri2mri.threads``: a short OpenMP spin before a
waiting thread sleeps), as the ``mri2mri`` command applies it, unless the environment sets its
own: with OpenMP's default long spin-waiting, a machine shared with other jobs makes every
parallel region wait for its slowest thread.

    python benchmarks/run_all.py [--quick] [--device cuda] [--size 256] [--only bench_train,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, format_table

from mri2mri.threads import choose_thread_policy, probe_busy_cores

HERE = Path(__file__).resolve().parent


def accepted_options(script: Path) -> str:
    """The script's --help text, to see which options it takes."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    return done.stdout


def summary_table(payload: dict[str, Any]) -> str:
    """The script's own table when it has one; else its list of results, else its scalars."""
    if payload.get("table"):
        return format_table(payload["table"], list(payload["table"][0]))
    if isinstance(payload.get("results"), list) and payload["results"]:
        rows = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in payload["results"]]
        return format_table(rows, list(rows[0]))
    scalars = [{"quantity": k, "value": v} for k, v in payload.items() if not isinstance(v, (dict, list))]
    return format_table(scalars, ["quantity", "value"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: quick modes only, results to a temp folder")
    parser.add_argument("--device", default=None, help="passed to the scripts that take --device")
    parser.add_argument("--size", default=None, help="passed to the scripts that take --size")
    parser.add_argument("--only", default=None, help="comma-separated script names (bench_train,...)")
    args = parser.parse_args(argv)

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {name.removesuffix(".py") for name in args.only.split(",")}
        scripts = [s for s in scripts if s.stem in wanted]
    environment = dict(os.environ)
    # What the mri2mri command would choose on this machine now; the user's own settings win.
    environment.update(choose_thread_policy(environment, probe_busy_cores()).chosen)
    quick_folder = Path(tempfile.mkdtemp(prefix="mri2mri-bench-")) if args.quick else None
    outcomes = []
    for script in scripts:
        options = accepted_options(script)
        command = [sys.executable, str(script)]
        if args.quick:
            if "--quick" not in options:
                outcomes.append((script.stem, "skipped (no --quick mode)", None))
                continue
            command.append("--quick")
        for flag, value in (("--device", args.device), ("--size", args.size)):
            if value is not None and flag in options:
                command += [flag, value]
        result_file = RESULTS / f"{script.stem}.json"
        if quick_folder is not None and "--out" in options:
            result_file = quick_folder / f"{script.stem}.json"
            command += ["--out", str(result_file)]
        print(f"== {script.stem}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=environment)
        seconds = time.perf_counter() - started
        status = f"ok in {seconds:.0f} s" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        outcomes.append((script.stem, status, result_file if done.returncode == 0 else None))

    print("\n# Benchmark results\n")
    failed = False
    for name, status, result_file in outcomes:
        print(f"## {name}: {status}\n")
        failed |= status.startswith("FAILED")
        if result_file is not None and result_file.is_file():
            payload = json.loads(result_file.read_text(encoding="utf-8"))
            print(summary_table(payload) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
