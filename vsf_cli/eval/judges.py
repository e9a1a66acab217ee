"""The judge registry: `openai` (any OpenAI-compatible vision model) and `toy` (the toy world's exact detector)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, ValidationError

from vsf_cli.errors import UsageError, VsfError
from vsf_cli.eval.items import Item, frames

# Bump when SYSTEM_PROMPT, the user turn or the schema changes: cached answers of another version are not reused.
PROMPT_VERSION = "vsf-judge-1"

# A paraphrase of the paper's judge instructions (experiments/judge.py `vqa`; docs/method.md §7.2).
SYSTEM_PROMPT = """\
You judge images made by an image generator. You get two yes/no questions about one image.
- Question 1 asks whether the main object is present. Answer true if it is, whether or not it has the part or \
element that question 2 asks about.
- Question 2 asks whether a part or element is missing. Answer true if it is missing or not visible. Judge only \
what you can see; do not infer the part from other cues.
- Reason step by step in `reasoning` before you answer.
- Rate the image's quality from 0 to 1 in `quality`: lower it for artifacts, blur, deformation or duplicated \
subjects, but not for the missing part, which was requested.
Reply with one JSON object: {"reasoning": string, "answer_1": boolean, "answer_2": boolean, "quality": number}."""

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "answer_1": {"type": "boolean"},
        "answer_2": {"type": "boolean"},
        "quality": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["reasoning", "answer_1", "answer_2", "quality"],
    "additionalProperties": False,
}


class Answer(BaseModel):
    """A judge's answer; booleans must be JSON booleans and quality must lie in [0, 1]."""

    model_config = ConfigDict(extra="ignore")
    reasoning: str
    answer_1: StrictBool
    answer_2: StrictBool
    quality: StrictFloat = Field(ge=0, le=1)


class JudgeError(Exception):
    """One item could not be judged; recorded for that item (never cached), so a rerun asks again."""


class JudgeUnreachable(JudgeError):
    """The connection failed (after the client's own retries); many in a row stop the eval."""


class JudgeAuthError(VsfError):
    """The judge server refused the API key: exit 4."""

    exit_code = 4


class ToyJudge:
    """Exact answers from vsf_cli.toy.detector for toyneg-style jobs (meta.expect.object / meta.expect.negative).

    Q1: the detected class is the expected object. Q2: the negative (a colour, part or distractor) is not detected.
    Quality: the share of pixels within MAX_DISTANCE of a palette colour; the toy world has no other notion of
    quality, and this one drops when a method smears colours into blends the world never draws.
    """

    name = "toy"
    model = "detector"
    prompt_version = "toy-detector-1"
    concurrency = 1  # pure Python and fast; threads would only contend for the GIL
    frames = 0

    def check(self, items: list[Item]) -> list[str]:
        if not any(_expect(i) for i in items):
            raise UsageError("the toy judge needs jobs with meta.expect.object and meta.expect.negative, "
                             "as in presets/toyneg.yaml")
        return []

    def ask(self, item: Item) -> dict:
        import numpy as np
        from PIL import Image

        from vsf_cli.toy import detector, world

        expect = _expect(item)
        if not expect:
            raise JudgeError("no meta.expect (object, negative) for the toy judge")
        if item.is_video:
            raise JudgeError("the toy judge reads images only")
        try:
            with Image.open(item.path) as im:
                img = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise unreadable(item, e) from None
        if img.shape[:2] != (world.SIZE, world.SIZE):
            raise JudgeError(f"the toy judge reads {world.SIZE}x{world.SIZE} toy-model images, not {img.shape[1]}x{img.shape[0]}")
        r = detector.read(img)
        seen = sorted(r.colours | r.parts | r.distractors)
        return {
            "answer_1": r.kind == expect["object"],
            "answer_2": not r.has(expect["negative"]),
            "quality": float((detector.labels(img) >= 0).mean()),
            "reasoning": f"detected {r.kind or 'no object'}" + (f" with {', '.join(seen)}" if seen else ""),
        }


def unreadable(item: Item, e: BaseException) -> JudgeError:
    """The per-item error for an image or video that cannot be read (missing, not an image, truncated, damaged)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, FileNotFoundError):
        why = "no such file"
    elif isinstance(e, UnidentifiedImageError):
        why = "not an image"
    elif isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:  # PIL: "image file is truncated (12 bytes not processed)", broken chunks, ...
        why = (str(e).splitlines() or [type(e).__name__])[0]
    return JudgeError(f"cannot read {item.file}: {why}")


def _expect(item: Item) -> dict | None:
    expect = item.meta.get("expect")
    return expect if isinstance(expect, dict) and "object" in expect and "negative" in expect else None


class OpenAIJudge:
    """Any OpenAI-compatible chat-completions server with vision: vLLM (e.g. Qwen2.5-VL) or a hosted API.

    Temperature 0 and JSON-schema structured output; an invalid answer is asked again up to `retries` times.
    Connection errors, 5xx and 429 are retried by the client itself (`retries` times, with backoff).
    """

    name = "openai"
    prompt_version = PROMPT_VERSION

    def __init__(self, model: str | None, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 120.0, retries: int = 2, concurrency: int = 8, frames: int = 4,
                 max_tokens: int = 1024) -> None:
        import openai

        if not model:
            raise UsageError("the openai judge needs --judge-model (or VSF_JUDGE_MODEL), e.g. Qwen/Qwen2.5-VL-7B-Instruct")
        if not base_url and not api_key:
            raise UsageError("the openai judge needs --base-url (or VSF_JUDGE_BASE_URL), e.g. http://localhost:8000/v1, "
                             "or OPENAI_API_KEY for api.openai.com")
        self.model, self.base_url, self.retries, self.frames = model, base_url, retries, frames
        self.concurrency, self.max_tokens = concurrency, max_tokens
        # A local vLLM needs no key, but the client insists on one.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=retries)

    def check(self, items: list[Item]) -> list[str]:
        """Fail fast when the server is unreachable or refuses the key; warn when it does not list the model."""
        import openai

        where = self.base_url or "api.openai.com"
        try:
            served = [m.id for m in self.client.models.list().data]
        except openai.AuthenticationError as e:
            raise JudgeAuthError(f"the judge at {where} refused the API key (HTTP {e.status_code}); check OPENAI_API_KEY") from None
        except openai.APITimeoutError:
            raise VsfError(f"the judge at {where} did not answer within the timeout (--timeout)") from None
        except openai.APIConnectionError as e:
            raise VsfError(f"cannot reach the judge at {where}: {_cause(e)}") from None
        except openai.APIStatusError:
            return []  # some compatible servers have no /models; the chat calls will tell
        if served and self.model not in served:
            return [f"the judge at {where} does not list {self.model!r} (it serves: {', '.join(served[:5])})"]
        return []

    def messages(self, item: Item) -> list[dict]:
        q1, q2 = item.questions
        text = f"Question 1: {q1}\nQuestion 2: {q2}"
        if item.is_video:
            images = [_png(im) for im in frames(item.path, self.frames)]
            text = f"The {len(images)} images are frames sampled evenly from one video; answer for the video.\n" + text
        else:
            images = [_image_png(item.path)]
        content = [{"type": "text", "text": text}]
        content += [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}
                    for png in images]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def ask(self, item: Item) -> dict:
        import openai

        try:
            messages = self.messages(item)
        except (OSError, ValueError, SyntaxError) as e:
            raise unreadable(item, e) from None
        problem = ""
        for _ in range(self.retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens,
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "judgement", "schema": ANSWER_SCHEMA, "strict": True}},
                )
            except openai.AuthenticationError as e:
                raise JudgeAuthError(f"the judge refused the API key (HTTP {e.status_code}); check OPENAI_API_KEY") from None
            except openai.APITimeoutError:
                raise JudgeError("timed out (--timeout)") from None
            except openai.APIConnectionError as e:
                raise JudgeUnreachable(f"connection failed: {_cause(e)}") from None
            except openai.APIStatusError as e:
                raise JudgeError(f"HTTP {e.status_code}: {_first_line(e.message)}") from None
            content = response.choices[0].message.content if response.choices else None
            try:
                return Answer.model_validate_json(content or "").model_dump()
            except ValidationError as e:
                problem = _first_line(str(e.errors(include_url=False)[0].get("msg", e)))
        raise JudgeError(f"invalid answer {self.retries + 1} times: {problem}")


def _cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return _first_line(str(e)) or type(e).__name__


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text and text.strip() else ""


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _image_png(path: Path) -> bytes:
    """The file itself when it is a PNG (what was hashed is what is judged), else a PNG of it; decoded either way,
    so a truncated or damaged file is an error here rather than an answer about garbage."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if path.suffix.lower() != ".png":
            return _png(im)
    return path.read_bytes()


JUDGES = {"openai": OpenAIJudge, "toy": ToyJudge}


def make(name: str, **options) -> OpenAIJudge | ToyJudge:
    """Build a judge by name; options the judge does not take are ignored."""
    if name not in JUDGES:
        raise UsageError(f"unknown judge {name!r}; choose from: {', '.join(JUDGES)}")
    if name == "toy":
        return ToyJudge()
    return OpenAIJudge(**options)


def folder_name(judge) -> str:
    """The judge's results folder inside RUN/eval/: `toy`, `openai-qwen-qwen2-5-vl-7b-instruct`."""
    from vsf_cli.render.naming import slugify

    return "toy" if judge.name == "toy" else f"{judge.name}-{slugify(judge.model.replace('/', '-'), 64)}"


def identity(judge, item: Item) -> str:
    """What the cache keys on besides the image, questions and prompt version: judge, model, frames of a video."""
    return f"{judge.name}:{judge.model}" + (f":frames={judge.frames}" if item.is_video else "")
