"""Send a sweep of runs to SLURM (or the local executor) as one submitit job array.

    sslrun-submit (or python jobs/submit.py) --array seeds=42,43,44 [--array strategy=fixmatch,supervised] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from sslrun.cli import OneLineParser, console_script
from sslrun.config import check_text
from sslrun.errors import UserError, write_error


def user_defaults() -> dict:
    """Cluster defaults from $SSLRUN_SUBMIT_CONFIG or ~/.config/sslrun/submit.yaml (keys: --option names)."""
    from sslrun.yaml_file import read_yaml_mapping

    given = os.environ.get("SSLRUN_SUBMIT_CONFIG", "")
    path = Path(given or "~/.config/sslrun/submit.yaml").expanduser()
    if not path.exists():
        if given:  # a file named on purpose and missing is a typo, not "no defaults"
            raise UserError(f"$SSLRUN_SUBMIT_CONFIG={given}: no such file")
        return {}
    raw = read_yaml_mapping(path, "a mapping such as 'partition: gpu'", empty_ok=True)
    return {k.replace("-", "_"): v for k, v in raw.items()}


def main(argv: list[str] | None = None) -> int:
    from sslrun.launch import ClusterOptions

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, key=value")
    parser.add_argument("--array", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep axis; several --array give their cartesian product (seeds= means seed=)")
    parser.add_argument("--sweep-file", dest="sweep_file", help="a YAML sweep file (see sweeps/)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, the job parameters and the sbatch "
                        "script, submit nothing")
    parser.add_argument("--write-runs", metavar="FILE", help="write one line of overrides per unfinished run to FILE "
                        "(for slurm/train-array.sbatch), submit nothing")
    parser.add_argument("--wait", dest="wait", action="store_true", default=None,
                        help="wait for the runs and print the results table (default with the local executor)")
    parser.add_argument("--no-wait", dest="wait", action="store_false")
    opt_fields = {f.name: f for f in fields(ClusterOptions)}
    defaults = user_defaults()
    unknown = sorted(set(defaults) - set(opt_fields))
    if unknown:
        raise UserError(f"submit defaults file: unknown key '{unknown[0]}' (known: {', '.join(opt_fields)})")
    try:
        ClusterOptions(**defaults).check()
    except UserError as err:
        raise UserError(f"submit defaults file: {err}") from None
    for name, f in opt_fields.items():
        flag = "--" + name.replace("_", "-")
        default = defaults.get(name, f.default if f.default is not f.default_factory else None)  # type: ignore[misc]
        if name == "sbatch":
            parser.add_argument(flag, action="append", default=list(defaults.get("sbatch", [])), metavar="OPT=VALUE",
                                help="any other sbatch option, e.g. --sbatch mail-type=END")
        else:
            parser.add_argument(flag, type=type(f.default), default=default, metavar=name.upper())
    args = parser.parse_intermixed_args(argv)  # key=value overrides anywhere, before or after options
    if args.write_runs:
        out = Path(args.write_runs)
        check_text("--write-runs", str(out))
        if not out.parent.is_dir() or out.is_dir():
            raise UserError(f"--write-runs {out}: expected a file in an existing folder "
                            f"({out.parent} {'is missing' if not out.parent.is_dir() else 'holds it as a folder'})")

    from sslrun import launch, results

    sweep_rows = None
    if args.sweep_file:
        from sslrun.sweeps import read_sweep_file

        sweep_rows = read_sweep_file(args.sweep_file)
    # Cluster options first: a typo there must not leave anything behind (planning writes data).
    opts = ClusterOptions(**{k: getattr(args, k) for k in opt_fields})
    opts.check()
    cluster = opts.resolved_cluster()
    cpus_note = ""
    # Local jobs use this machine's CPUs; an --sbatch cpus-... or mincpus option is the user's choice.
    if not opts.cpus_per_task and not opts.sbatch_asks("cpus", "mincpus", "c") and (cluster == "slurm" or args.dry_run):
        opts.cpus_per_task, why = launch.default_cpus_per_task(opts, launch.node_cpus(opts.partition))
        cpus_note = f"cpus_per_task={opts.cpus_per_task}: not given, so {why} (--cpus-per-task N to choose)"
    params = launch.executor_parameters(opts)
    configs = launch.plan_runs(args.array, args.overrides, sweep_rows)
    launch.check_devices(configs, opts, cluster)
    sweep_dir = Path(configs[0].root) / configs[0].sweep
    states = {c.name: launch.run_state(c) for c in configs}
    print(f"{len(configs)} runs in {sweep_dir} ({cluster} executor):")
    print(f"  {'state':8} {'run (its overrides, unless name= is given)':44} folder")
    for c in configs:
        print(f"  {states[c.name]:8} {c.name:44} {c.run_dir()}")
    if cpus_note:
        print(cpus_note)
    for line in launch.schedule_warnings([c for c in configs if states[c.name] != "done"], opts.nodes * opts.tasks()):
        print(line, file=sys.stderr)
    if args.write_runs:
        todo = [c for c in configs if states[c.name] != "done"]
        from sslrun.atomic import write_atomic

        text = "".join(" ".join(shlex.quote(o) for o in launch.run_overrides(c)) + "\n" for c in todo)
        try:
            write_atomic(Path(args.write_runs), text.encode())
        except OSError as err:
            raise write_error(args.write_runs, err) from None
        print(f"wrote {len(todo)} runs to {args.write_runs}: sbatch --array=0-{len(todo) - 1} "
              f"slurm/train-array.sbatch {args.write_runs}")
        return 0
    if args.dry_run:
        print("job parameters: " + ", ".join(f"{k}={v}" for k, v in params.items())
              + f", slurm_max_num_timeout={opts.max_requeues}")
        todo = sum(1 for s in states.values() if s != "done")
        if todo:
            print(f"sbatch script for the {todo} unfinished runs:")
            print(launch.sbatch_script(sweep_dir / ".submitit", opts, todo))
        print("dry run: nothing submitted")
        return 0
    jobs = launch.submit(configs, opts)
    if not jobs:
        print("every run is finished already; nothing submitted")
    for cfg, job in jobs:
        print(f"  job {job.job_id:14} {cfg.name}  log: {job.paths.stdout}")
    print(f"tensorboard --logdir {sweep_dir}")
    wait = args.wait if args.wait is not None else cluster == "local"
    if wait and jobs:
        from sslrun.progress import Progress

        progress = Progress([(c.name, c.run_dir(), c.steps) for c, _ in jobs])
        try:
            outcome = launch.wait(jobs, on_poll=progress.update)
        finally:
            progress.close()
        failed = {k: v for k, v in outcome.items() if v != "ok"}
        for name, why in failed.items():
            print(f"run {name} failed: {why}", file=sys.stderr)
    if wait or not jobs:
        names = {c.name for c in configs}
        rows = [r for r in results.collect(sweep_dir) if r["run"] in names]
        print(results.seed_table(rows))
        print(f"tensorboard --logdir {sweep_dir}")
        return 1 if wait and jobs and failed else 0
    return 0


entry = console_script(main)  # `sslrun-submit`
