"""A setting's negative prompt, one text or several: normalised, listed, shown, and passed to `guidance.apply`."""

Negative = str | list[str]


def normalise(value) -> Negative | None:
    """None, one text, or a list of two or more (a list of one is that text); blank texts are refused by settings."""
    if value is None or isinstance(value, str):
        return value
    texts = list(value)
    if not texts:
        return None
    return texts[0] if len(texts) == 1 else texts


def texts(value: Negative | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def label(value: Negative | None) -> str:
    """One line for people and for prompts that take one text (A1111's `Negative prompt:`, CFG, judge questions)."""
    return ", ".join(texts(value))


def for_call(value: Negative | None):
    """The `negative=` of `guidance.apply` for one prompt: several negatives are one entry holding all of them."""
    return [tuple(value)] if isinstance(value, list) else value
