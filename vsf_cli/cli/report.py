"""`vsf report RUN_DIR...`: a Table-1 markdown table, a contact sheet and a trade-off plot from eval results."""

from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes


@app.command("report")
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more evaluated run folders (see `vsf eval`)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for table.md, contact_sheet.png, tradeoff.png. (default: RUN_DIR/report for one run, else report/)"),
    judge: str = typer.Option(None, "--judge", "-j", help="Which eval results to use when a run has several: toy, openai, or the folder name under RUN_DIR/eval/."),
    rows: int = typer.Option(8, "--rows", min=1, max=200, help="Prompts (rows) on the contact sheet, spread evenly over the run."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write table.md (the paper's Table 1 shape), contact_sheet.png (rows = prompts, columns = settings) and
    tradeoff.png (negative against positive and against quality, one point per setting). Prints the paths."""
    with errors_to_exit_codes(debug):
        from vsf_cli.eval.report import write

        out_dir = out or (run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report"))
        for path in write(run_dirs, out_dir, judge=judge, rows=rows):
            typer.echo(str(path))
