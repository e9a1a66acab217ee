"""Flux.1: joint attention with the text first, in dual- and single-stream blocks; T5 negatives, copied text ids."""

from vsf_cli import private
from vsf_cli.models.families import Family

T5_MAX_TOKENS = 512  # the pipelines' default max_sequence_length


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """T5 states of the negative: (1, tokens, joint_attention_dim); unpadded for VSF, padded like the positive else.

    Cut at the call's `max_sequence_length`, as the pipeline cuts the positive. CLIP only makes Flux's pooled
    vector, which stays the positive's.
    """
    import torch

    device = private.execution_device(pipe)
    length = max_sequence_length or T5_MAX_TOKENS
    with torch.no_grad():
        if padded:
            embeds = pipe.encode_prompt(prompt=text, prompt_2=None, device=device, max_sequence_length=length)[0]
            return embeds.to("cpu")
        ids = pipe.tokenizer_2(text, truncation=True, max_length=length, return_tensors="pt").input_ids
        return pipe.text_encoder_2(ids.to(device))[0].to("cpu")


def extend_kwargs(kwargs: dict, added: int) -> dict:
    """Give the appended text tokens position ids by the positive's own convention (its first rows).

    Today the pipeline's text ids are all zero; copying rows keeps whatever it uses, so every negative token gets
    the rotary embedding a positive token in that row would get, applied by Flux's own attention.
    """
    import torch

    txt_ids = kwargs["txt_ids"]
    txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
    rows = txt_ids[torch.arange(added, device=txt_ids.device) % txt_ids.shape[0]]
    return {**kwargs, "txt_ids": torch.cat([txt_ids, rows], dim=0)}


FAMILY = Family(
    name="flux",
    label="Flux",
    pipelines={"text": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
    default_model="flux-schnell",
    hub_names=("flux",),
    attention="joint",
    text_first=True,
    # Every dual-stream and every single-stream block: the negative is in the joint sequence of both.
    attentions=lambda transformer: ([b.attn for b in transformer.transformer_blocks]
                                    + [b.attn for b in transformer.single_transformer_blocks]),
    encode_negative=encode_negative,
    extend_kwargs=extend_kwargs,
    cfg_argument="true_cfg_scale",  # Flux's guidance_scale is dev's distilled guidance embedding, not CFG
)
