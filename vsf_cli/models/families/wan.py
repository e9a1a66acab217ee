"""Wan 2.1: cross-attention from the video tokens to a UMT5 text context; unpadded UMT5 negatives."""

from vsf_cli.errors import UsageError
from vsf_cli import private
from vsf_cli.models.families import Family


def encode_negative(pipe, text: str, padded: bool = False):
    """Encode a negative prompt as (1, n_N, text_dim) UMT5 states with EOS and no padding (docs/method.md §4.1).

    The text is cleaned and tokenized as the pipeline does its positive; padding would be flipped too, so there is
    none. `padded` changes nothing here: the cross-attention layout pads a NAG or NASA negative itself.
    """
    import torch
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = pipe.tokenizer(prompt_clean(text), truncation=True, max_length=pipe.tokenizer.model_max_length,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = private.execution_device(pipe)
    with torch.no_grad():
        states = pipe.text_encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
    return states.to("cpu")


def check_call(pipe) -> None:
    """Wan 2.2's two-expert pipelines switch to `transformer_2` mid-way, which is not guided yet."""
    if getattr(pipe, "transformer_2", None) is not None:
        raise UsageError("Wan 2.2 two-expert pipelines (transformer_2) are not supported yet; use Wan 2.1")


FAMILY = Family(
    name="wan",
    label="Wan",
    pipelines={"text": "WanPipeline", "img2video": "WanImageToVideoPipeline"},
    default_model="wan-1.3b",
    hub_names=("wan2.1-t2v", "wan2.1-i2v"),
    attention="cross",
    # Every block's cross-attention to the text; self-attention (`attn1`) is left alone.
    attentions=lambda transformer: [block.attn2 for block in transformer.blocks],
    encode_negative=encode_negative,
    # Image-to-video: diffusers' Wan attention splits these image tokens off at a fixed 512 text tokens.
    image_context_kwarg="encoder_hidden_states_image",
    check_call=check_call,
    video=True,
    frame_step=4,  # the VAE packs 4 frames per latent after the first
    frames_trained=81,
    vae_dtype="float32",  # diffusers' Wan docs: the VAE decodes in float32
    tasks_loaded=("text", "img2video"),
)
