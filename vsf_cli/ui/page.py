"""The `vsf ui` Gradio page: inputs built from the settings' own fields, the none-vs-method grid, and Save."""

import time
import typing
from pathlib import Path

import gradio as gr

from vsf_cli.ui.session import Comparison, Request, Session, save

SAVE_FOLDER = "out/ui"
FLOAT_STEP = 0.001  # slider resolution; every method default is a multiple of it
# System fonts: the default theme fetches web fonts, and this page works offline.
FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}


def _bounds(field) -> tuple:
    """(low, high) of a pydantic field's ge/gt and le/lt constraints; None where it is open."""
    found = {attr: getattr(c, attr) for c in field.metadata for attr in ("ge", "gt", "le", "lt")
             if getattr(c, attr, None) is not None}
    return found.get("ge", found.get("gt")), found.get("le", found.get("lt"))


def _model_value(model: str, name: str, default):
    """The model's own default for a setting the registry sets per model (scale, offset, steps), else `default`."""
    from vsf_cli.models.registry import resolve
    from vsf_cli.settings import MODEL_DEFAULTS

    return getattr(resolve(model), name) if name in MODEL_DEFAULTS else default


def _shown(name: str, method: str, model: str) -> bool:
    """Whether knob `name` is shown: the method takes it and the model's command has its flag."""
    from vsf_cli.cli.video import EXCLUDED
    from vsf_cli.guidance import knobs

    return method in knobs()[name].methods and not (_video(model) and name in EXCLUDED)


def _knob_info(name: str, model: str) -> str:
    """The knob's `--help` text: what it does, its range, and its default for `model`."""
    from vsf_cli.cli.options import describe
    from vsf_cli.guidance import knobs

    knob = knobs()[name]
    return describe(name, knob.field, model, "/".join(m.upper() for m in knob.methods))


def _knob_input(name: str, knob, model: str, method: str):
    """A slider (both bounds), number box (one open side) or radio (a choice) from the method's own field."""
    field = knob.field
    common = {"label": name, "info": _knob_info(name, model), "visible": _shown(name, method, model),
              "value": _model_value(model, name, field.default), "elem_id": f"knob-{name}"}
    if typing.get_origin(field.annotation) is typing.Literal:
        return gr.Radio(list(typing.get_args(field.annotation)), **common)
    low, high = _bounds(field)
    step = 1 if field.annotation is int else FLOAT_STEP
    if low is not None and high is not None:
        return gr.Slider(low, high, step=step, **common)
    return gr.Number(minimum=low, maximum=high, step=step, **common)


def _video(model: str) -> bool:
    from vsf_cli.models import families
    from vsf_cli.models.registry import resolve

    return families.get(resolve(model).family).video


def _size(model: str) -> str:
    from vsf_cli.models.registry import resolve

    spec = resolve(model)
    return f"{spec.width}x{spec.height}"


def _whole(value) -> int | None:
    """A number box's value as an int (None: empty, the model's own)."""
    return None if value is None else int(value)


def _grid(comparison: Comparison):
    items = [(str(path), f"{row.label} · seed {seed}") for row in comparison.rows
             for path, seed in zip(row.paths, comparison.seeds)]
    return gr.Gallery(value=items, columns=len(comparison.seeds))


def build(session: Session, model: str):
    """The page for `session`, starting on `model`."""
    from vsf_cli.cli.options import describe
    from vsf_cli.errors import describe as describe_error
    from vsf_cli.guidance import METHODS, knobs
    from vsf_cli.models.registry import MODELS
    from vsf_cli.settings import MODEL_DEFAULTS, GenSettings

    methods = [m for m in METHODS if m != "none"]
    steps_field = GenSettings.model_fields["steps"]
    with gr.Blocks(title="vsf ui", analytics_enabled=False) as page:
        gr.Markdown("### vsf: the same seeds without guidance (top row) and with a negative method")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", elem_id="prompt")
                negative = gr.Textbox(label="negative", elem_id="negative", lines=2,
                                      info="One per line: several lines are several negatives, each removed.")
                model_box = gr.Dropdown(list(dict.fromkeys([model, *MODELS])), value=model, allow_custom_value=True,
                                        label="model", elem_id="model",
                                        info="An alias or a local diffusers folder; a new one loads on "
                                        "Generate, replacing the loaded one.")
                method = gr.Dropdown(methods, value="vsf", label="method", elem_id="method")
                knob_inputs = {name: _knob_input(name, knob, model, "vsf") for name, knob in knobs().items()}
                sweep = gr.Textbox(label="sweep", elem_id="sweep", info="Optional: values of the method's first knob "
                                   "(VSF: scale, the α), e.g. 1 2 3.5 5; one row each.")
                seeds = gr.Textbox("0 1 2 3", label="seeds", elem_id="seeds", info="One column each, 0 to 2^63-1.")
                with gr.Row():
                    steps = gr.Number(_model_value(model, "steps", None), precision=0, label="steps", elem_id="steps",
                                      minimum=_bounds(steps_field)[0], maximum=_bounds(steps_field)[1],
                                      info=describe("steps", steps_field, model))
                    size = gr.Textbox(_size(model), label="size", elem_id="size",
                                      info="WIDTHxHEIGHT, or one number for a square.")
                frames = gr.Number(_model_value(model, "frames", None), precision=0, label="frames", elem_id="frames",
                                   visible=_video(model), info="Video: 4k+1 frames.")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                grid = gr.Gallery(label="one column per seed", columns=4, height="auto", object_fit="contain",
                                  elem_id="grid")
                rows = gr.CheckboxGroup(label="rows to save", elem_id="rows")
                folder = gr.Textbox(SAVE_FOLDER, label="save into", elem_id="folder")
                save_button = gr.Button("Save", elem_id="save")
                saved = gr.Markdown(elem_id="saved")
        comparison = gr.State()
        names = list(knob_inputs)

        def model_changed(model_name: str, chosen: str):
            """The new model's own defaults (steps, size, frames, scale, offset) and knobs; it loads on Generate."""
            try:
                own = {n: {"value": _model_value(model_name, n, None)} if n in MODEL_DEFAULTS else {} for n in names}
                knob_updates = [gr.update(visible=_shown(n, chosen, model_name), info=_knob_info(n, model_name),
                                          **own[n]) for n in names]
                return ["", gr.update(value=_model_value(model_name, "steps", None),
                                      info=describe("steps", steps_field, model_name)),
                        _size(model_name), gr.update(value=_model_value(model_name, "frames", None),
                                                     visible=_video(model_name)), *knob_updates]
            except Exception as e:  # noqa: BLE001 — a message on the page, the server stays up
                return [f"**error:** {describe_error(e)}", *(gr.update() for _ in range(3 + len(names)))]

        def run(prompt_text, negative_text, model_name, chosen, sweep_text, seeds_text, steps_value, size_text,
                frames_value, *knob_values, progress=gr.Progress()):
            warnings: list[str] = []
            started = time.perf_counter()
            try:
                request = Request(prompt_text, negative_text, model_name, method=chosen,
                                  knobs=dict(zip(names, knob_values)), seeds=seeds_text, steps=_whole(steps_value),
                                  size=size_text, frames=_whole(frames_value) if _video(model_name) else None,
                                  sweep=sweep_text)
                planned = session.plan(request, warnings.append)
                done, total = [0], planned.steps
                progress((0, total), desc="rendering")

                def step():
                    done[0] += 1
                    progress((done[0], total), desc="rendering")

                session.render(planned, on_step=step)
            except Exception as e:  # noqa: BLE001 — a message on the page, the server stays up
                return f"**error:** {describe_error(e)}", gr.update(), gr.update(), gr.update()
            seeds = len(planned.seeds)
            lines = [f"rendered {len(planned.rows)} rows × {seeds} seed{'s' * (seeds > 1)} in "
                     f"{time.perf_counter() - started:.1f}s", *(f"warning: {w}" for w in warnings)]
            choices = [(row.label, index) for index, row in enumerate(planned.rows)]
            return ("  \n".join(lines), _grid(planned), gr.update(choices=choices, value=[c[1] for c in choices]),
                    planned)

        def keep(planned, chosen_rows, folder_text):
            if planned is None:
                return "**error:** generate first"
            try:
                written, commands = save(planned, sorted(chosen_rows or []), Path(folder_text or SAVE_FOLDER))
            except Exception as e:  # noqa: BLE001 — a message on the page, the server stays up
                return f"**error:** {describe_error(e)}"
            if not written:
                return "**error:** choose the rows to save"
            files = "\n".join(f"- {path}" for path in written)
            return f"saved {len(written)} files:\n{files}\n\nthe same from the shell:\n```bash\n" + \
                "\n".join(commands) + "\n```"

        inputs = [prompt, negative, model_box, method, sweep, seeds, steps, size, frames, *knob_inputs.values()]
        method.change(lambda chosen, model_name: [gr.update(visible=_shown(n, chosen, model_name)) for n in names],
                      [method, model_box], list(knob_inputs.values()))
        model_box.change(model_changed, [model_box, method], [status, steps, size, frames, *knob_inputs.values()])
        generate.click(run, inputs, [status, grid, rows, comparison])
        save_button.click(keep, [comparison, rows, folder], saved)
    return page


def launch(page, session: Session, host: str, port: int) -> None:
    """Serve the page until Ctrl-C; one request renders at a time, the others wait in the queue."""
    page.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, allowed_paths=[str(session.folder)], ssr_mode=False, quiet=True,
        theme=gr.themes.Default(**FONTS), show_error=False)
