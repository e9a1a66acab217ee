"""`vsf report RUN_DIR...`: a Table-1 markdown table, a contact sheet and a trade-off plot from eval results."""

from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes, warn


@app.command("report")
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more evaluated run folders (see `vsf eval`)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for table.md, contact_sheet.png, tradeoff.png. (default: RUN_DIR/report for one run, else report/)"),
    judge: str = typer.Option(None, "--judge", "-j", help="Which eval results to use when a run has several: toy, openai, or the folder name under RUN_DIR/eval/."),
    rows: int = typer.Option(8, "--rows", min=1, max=200, help="Prompts (rows) on the contact sheet, spread evenly over the run."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write table.md (the paper's Table 1 shape), contact_sheet.png (rows = prompts, columns = settings) and
    tradeoff.png (negative against positive and against quality, one point per setting). Prints the paths.

    Exit 3 when some items were not judged or some images could not be drawn (their tiles are marked)."""
    with errors_to_exit_codes(debug):
        from vsf_cli.eval.report import not_judged, write

        out_dir = out or (run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report"))
        missing: list[str] = []
        for path in write(run_dirs, out_dir, judge=judge, rows=rows, missing=missing):
            typer.echo(str(path))
        errors = not_judged(run_dirs, judge)
        if missing:
            warn(f"{len(missing)} image{'s' if len(missing) > 1 else ''} could not be drawn and {'are' if len(missing) > 1 else 'is'} "
                 f"marked on the contact sheet (first: {missing[0]})")
        if errors:
            warn(f"{errors} item{'s' if errors > 1 else ''} could not be judged (see results.jsonl); rerun `vsf eval` to retry them")
        if missing or errors:
            raise typer.Exit(3)
