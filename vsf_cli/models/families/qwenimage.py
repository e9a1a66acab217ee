"""Qwen-Image and Qwen-Image-Edit: double-stream joint attention, text first; Qwen2.5-VL negatives, text rotary.

Layout (docs/method.md §13). Each block projects text and image separately and attends over [text, image]; the
pipeline pads a batch's prompts to the longest and passes `encoder_hidden_states_mask` (None when nothing is
padded), which the block's processor turns into a boolean key mask. The forward gives the text rotary positions
max(h/2, w/2) + j, from the text's length. So:
- the negative is encoded as the pipeline encodes a prompt alone (its template, the leading template tokens
  dropped, no padding) and without any image, so in the edit pipeline no image token is in what gets flipped;
- it is appended to the call's text, after the positive's padding; the text mask is extended to cover it;
- its rotary rows restart at the text's first position, so negative token k sits where a prompt's token k would.
The positive's and the image's tokens, mask and positions are the stock ones: an infinite offset reproduces the
stock output.
"""

from vsf_cli import private
from vsf_cli.models.families import Family


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """The negative as the pipeline encodes a prompt: (1, tokens, joint_attention_dim), text only.

    `padded` changes nothing: the pipeline pads a prompt only to the longest of its batch, and a prompt alone has
    none. `max_sequence_length` None is the pipeline call's default.
    """
    import inspect

    import torch

    if max_sequence_length is None:
        max_sequence_length = inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
    with torch.no_grad():
        embeds = pipe.encode_prompt(prompt=text, device=private.execution_device(pipe),
                                    max_sequence_length=max_sequence_length)[0]
    return embeds[:, :max_sequence_length].to("cpu")


def extend_kwargs(kwargs: dict, added: int) -> dict:
    """Extend the text mask over the appended tokens (shorter negatives' padding is masked by the guidance)."""
    import torch

    mask = kwargs.get("encoder_hidden_states_mask")
    if mask is None:
        return kwargs
    return {**kwargs, "encoder_hidden_states_mask": torch.cat([mask, mask.new_ones(mask.shape[0], added)], dim=1)}


def restart_text_rotary(output, n_positive: int):
    """`pos_embed`'s (image rotary, text rotary): the rows after the positive's restart at the first text row."""
    import torch

    image, text = output
    return image, torch.cat([text[:n_positive], text[:text.shape[0] - n_positive]])


FAMILY = Family(
    name="qwenimage",
    label="Qwen-Image",
    pipelines={"text": "QwenImagePipeline", "img2img": "QwenImageImg2ImgPipeline",
               "inpaint": "QwenImageInpaintPipeline", "edit": "QwenImageEditPlusPipeline"},
    default_model="qwen-image-lightning",
    hub_names=("qwen-image",),
    attention="joint",
    text_first=True,
    attentions=lambda transformer: [block.attn for block in transformer.transformer_blocks],
    encode_negative=encode_negative,
    extend_kwargs=extend_kwargs,
    text_rotary=lambda transformer: transformer.pos_embed,
    place_text_rotary=restart_text_rotary,
    cfg_argument="true_cfg_scale",  # guidance_scale is for guidance-distilled checkpoints, not CFG
    guidance_embedding="guidance_embeds",
    tasks_loaded=("text", "edit"),
    needs=(("edit", "torchvision"),),  # transformers builds the edit pipeline's Qwen2VLProcessor only with it
)
