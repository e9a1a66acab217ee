"""`vsf ui`: serve the local compare-and-tune page (Gradio, an optional extra) on one loaded model."""

import typer

from vsf_cli.cli import app
from vsf_cli.cli import options as o
from vsf_cli.cli.common import console, errors_to_exit_codes
from vsf_cli.errors import UsageError
from vsf_cli.models.registry import DEFAULT_MODEL

INSTALL = 'pip install "vsf-cli[ui]"'
_HELP = o.flags(DEFAULT_MODEL)  # the load flags say what `vsf gen` says


@app.command("ui")
def ui(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", show_default=False, help=f"Alias (see `vsf models`), local diffusers folder or hub id, loaded at start; the page can switch. (default: {DEFAULT_MODEL})"),
    host: str = typer.Option("127.0.0.1", "--host", show_default=False, help="Address to serve on; 0.0.0.0 shows the page to your network. (default: 127.0.0.1)"),
    port: int = typer.Option(7860, "--port", show_default=False, help="Port to serve on, 1-65535. (default: 7860)"),
    device: str = typer.Option(None, "--device", help=_HELP["device"][1]),
    dtype: str = typer.Option(None, "--dtype", help=_HELP["dtype"][1]),
    offload: str = typer.Option(None, "--offload", help=_HELP["offload"][1]),
    quantize: str = typer.Option(None, "--quantize", help=_HELP["quantize"][1]),
    compile: bool = typer.Option(None, "--compile/--no-compile", help=_HELP["compile"][1]),
    offline: bool = typer.Option(False, "--offline", help="Use only the local hub cache; never touch the network."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    """Compare none and a method on the same seeds in the browser, tune the knobs, and save what works."""
    with errors_to_exit_codes(debug):
        if not 1 <= port <= 65535:
            raise UsageError(f"--port {port} is out of range; use 1-65535")
        try:
            from vsf_cli.ui.page import build, launch
        except ModuleNotFoundError as e:
            if e.name != "gradio":
                raise
            raise UsageError(f"vsf ui needs gradio, an optional extra: {INSTALL}") from None
        from vsf_cli.ui.session import Session

        console.print(f"loading {model}")
        given = {"device": device, "dtype": dtype, "offload": offload, "quantize": quantize, "compile": compile}
        load = {k: v for k, v in given.items() if v is not None}
        session = Session(model, offline=offline, load=load)
        page = build(session, model)
        console.print(f"serving on http://{host}:{port} (Ctrl-C stops)")
        launch(page, session, host, port)
