"""`vsf batch FILE` renders a job file (resumable, shardable); `vsf batch status DIR` shows merged progress."""

import json
from pathlib import Path

import typer
from typer.core import TyperGroup

from vsf_cli.cli import app
from vsf_cli.cli import options as o
from vsf_cli.cli.common import console, errors_to_exit_codes, fail, warn
from vsf_cli.errors import UsageError
from vsf_cli.negatives import label
from vsf_cli.models.registry import DEFAULT_MODEL


class _RunByDefault(TyperGroup):
    """`vsf batch FILE` means `vsf batch run FILE`; `status` stays a subcommand."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


batch_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True, help="Render a job file: `vsf batch FILE` (see `vsf batch run --help`), or `vsf batch status DIR`.")
app.add_typer(batch_app, name="batch")


@batch_app.command("run")
@o.add_flags(DEFAULT_MODEL, after="model", every_job=True)
def run(
    file: str = typer.Argument(..., help="A YAML job file, a .txt prompt list (`prompt | negative` per line), NegGenBench .json, or a preset name."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder for images, manifest and plan. (default: out/<file name>)"),
    output: str = typer.Option(None, "--output", help="File name template inside the output folder; fields {index} {seed} {slug} {model} {method} {id}. (default: the file's, else {index:05d}_{slug}_{id}.png)"),
    preset: str = typer.Option(None, "--preset", help="Apply a preset's defaults under the file's own (see `vsf presets`)."),
    sweep: list[str] = typer.Option(None, "--sweep", help="KEY=V1,V2,... added to the file's sweep, repeatable, e.g. method=none,vsf,nag."),
    model: str = typer.Option(None, "--model", "-m", help=f"Model for every job (overrides the file). (default: the file's, else {DEFAULT_MODEL})"),
    shard: str = typer.Option(None, "--shard", help="i/N: take jobs with index % N == i. (default: RANK/WORLD_SIZE, SLURM, else 0/1)"),
    force: bool = typer.Option(False, "--force", help="Redo jobs that are already done."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun jobs that failed before (skipped by default)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed job."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files at a job's path that are not the job's output (they match no record of it and do not carry its id)."),
    max_jobs: int = typer.Option(None, "--max-jobs", min=1, help="Refuse a file that expands to more jobs than this. (default: 100000)"),
    offline: bool = typer.Option(False, "--offline", help="Use only the local hub cache."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded jobs (with --json: their counts); load nothing."),
    as_json: bool = typer.Option(False, "--json", help="JSON output: the summary (or the dry-run counts) as one object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors outside jobs."),
    **options,  # the generation flags `gen` takes too (vsf_cli.cli.options), over every job: the top layer
) -> None:
    """Render every job of a file, resuming where a previous run stopped. Exit 3 if any job failed.

    Generation flags (--model, --neg, --method, the method knobs, --steps, ...) override the file for every job.
    """
    with errors_to_exit_codes(debug):
        from vsf_cli.batch import plan, runner, spec
        from vsf_cli.settings import env_layer

        path = Path(file)
        if not path.exists() and not file.endswith((".yaml", ".yml", ".txt", ".json")):
            path = spec.preset_path(file)
        if output:
            plan.check_output_template(output, f"--output {output!r}")
        batch = spec.load(path)
        if output:
            batch.output = output
        if sweep:
            batch.sweep = {**(batch.sweep or {}), **_parse_sweeps(sweep)}
            spec.Expansion(sweep=batch.sweep)  # validates the keys
        out_dir = out or Path("out") / path.stem
        rank, world = plan.shard(shard)
        flags = o.to_settings(options)
        flags.update(model=model, device=plan.local_device(flags["device"]))
        warnings: set[str] = set()
        jobs = plan.expand(batch, preset=spec.preset_defaults(preset or batch.preset), env=env_layer(), flags=flags,
                           out_dir=out_dir, warn=warnings.add, max_jobs=max_jobs or plan.MAX_JOBS)
        for message in sorted(warnings):
            warn(message)
        mine = [j for j in jobs if j.index % world == rank]
        if dry_run:
            _dry_run(jobs, mine, rank, world, as_json)
            return
        work = runner.Runner(out_dir, rank, world, offline=offline, console=console, quiet=quiet)
        try:
            with work.lock():  # one writer per shard: a second process on it stops here with exit 2
                runner.write_plan(out_dir, str(path), jobs)
                todo, outcome = work.select(mine, force=force, retry_failed=retry_failed, warn=warn)
                if not quiet:
                    console.print(f"{len(jobs)} jobs, shard {rank}/{world}: {len(mine)} mine, {outcome.skipped} "
                                  f"already done, {outcome.failed_before} failed before, {len(todo)} to render into "
                                  f"{out_dir}")
                try:
                    outcome = work.run(todo, outcome, fail_fast=fail_fast, overwrite=overwrite)
                except KeyboardInterrupt:
                    # Not through rich: a Ctrl-C inside console.print leaves its line in rich's buffer, which the
                    # next console.print would write a second time.
                    typer.echo(f"interrupted; finished jobs are in {work.manifest}, rerun the same command to resume",
                               err=True)
                    raise typer.Exit(130) from None
                except runner.RunStopped as e:  # a full disk: the summary, then one line
                    _summary(outcome, out_dir, as_json, quiet)
                    raise fail(str(e), e.exit_code) from None
        except OSError as e:  # outside a job: the plan, the lock file or the manifest's repair
            from vsf_cli.batch.manifest import is_disk_full

            if not is_disk_full(e):
                raise
            raise fail(f"the disk is full ({e.strerror or e}) under {out_dir}; free some space and rerun the same "
                       "command to resume") from None
        _summary(outcome, out_dir, as_json, quiet)
        if outcome.failed or outcome.failed_before:
            raise typer.Exit(3)


@batch_app.command("status")
def status(
    out_dir: Path = typer.Argument(..., help="A batch output folder (holds plan.json and manifest*.jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show done, failed and pending jobs of a batch over all its ranks, from the files on disk."""
    with errors_to_exit_codes():
        from vsf_cli.batch.runner import status as batch_status

        counts = batch_status(out_dir, warn=warn)
        if as_json:
            typer.echo(json.dumps(counts))
            return
        typer.echo(f"{counts['done']}/{counts['total']} done, {counts['failed']} failed, {counts['pending']} pending")
        if counts["unrecorded"]:
            typer.echo(f"  {counts['unrecorded']} finished before an interruption and not yet recorded; the next "
                       "`vsf batch` run records them without rendering them again")
        for failure in counts["failures"][:20]:
            typer.echo(f"  failed #{failure['index']} ({failure['id']}): {failure['error']}")
        for other in counts["foreign"][:20]:
            typer.echo(f"  not its output #{other['index']} ({other['id']}): {other['file']} is not this job's "
                       "output; --overwrite renders over it")


def _parse_sweeps(items: list[str]) -> dict[str, list]:
    import yaml

    sweeps = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UsageError(f"--sweep {item!r}: use KEY=V1,V2,... e.g. scale=2,3,4")
        sweeps[key.strip()] = [yaml.safe_load(v.strip()) for v in values.split(",")]
    return sweeps


def _dry_run(jobs, mine, rank: int, world: int, as_json: bool) -> None:
    if as_json:
        models = {}
        for job in mine:
            models[job.settings["model"]] = models.get(job.settings["model"], 0) + 1
        typer.echo(json.dumps({"jobs": len(jobs), "shard": f"{rank}/{world}", "mine": len(mine), "per_model": models}))
        return
    for job in mine:
        s = job.settings
        typer.echo(f"{job.index}\t{job.id}\t{job.path}\t{s['method']}\tseed {s['seed']}\t{s['prompt']} | {label(s['negative'])}")


def _summary(outcome, out_dir: Path, as_json: bool, quiet: bool) -> None:
    counts = {"done": outcome.done, "skipped": outcome.skipped, "failed": outcome.failed,
              "failed_before": outcome.failed_before, "out": str(out_dir)}
    if as_json:
        typer.echo(json.dumps(counts))
    if quiet:
        return
    from rich.table import Table

    table = Table("rendered", "already done", "failed", "failed before (--retry-failed)", title=f"batch {out_dir}")
    table.add_row(str(outcome.done), str(outcome.skipped), str(outcome.failed), str(outcome.failed_before))
    console.print(table)
