"""Wan 2.1 and 2.2: cross-attention from the video tokens to a UMT5 text context; unpadded UMT5 negatives."""

from vsf_cli import private
from vsf_cli.models.families import Family

MAX_TOKENS = 512  # the pipelines' default max_sequence_length


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """Encode a negative prompt as (1, n_N, text_dim) UMT5 states with EOS and no padding (docs/method.md §4.1).

    The text is cleaned and tokenized as the pipeline does its positive, truncated at the call's
    `max_sequence_length` (the context length L) as the pipeline truncates the positive; padding would be flipped
    too, so there is none. `padded` changes nothing here: the cross-attention layout pads a NAG or NASA negative
    itself.
    """
    import torch
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = pipe.tokenizer(prompt_clean(text), truncation=True, max_length=max_sequence_length or MAX_TOKENS,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = private.execution_device(pipe)
    with torch.no_grad():
        states = pipe.text_encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
    return states.to("cpu")


FAMILY = Family(
    name="wan",
    label="Wan",
    pipelines={"text": "WanPipeline", "img2video": "WanImageToVideoPipeline"},
    default_model="wan-1.3b",
    hub_names=("wan2.1-t2v", "wan2.1-i2v", "wan2.2-t2v", "wan2.2-i2v", "wan2.2-ti2v"),
    attention="cross",
    # Every block's cross-attention to the text; self-attention (`attn1`) is left alone.
    attentions=lambda transformer: [block.attn2 for block in transformer.blocks],
    encode_negative=encode_negative,
    # Wan 2.1 image-to-video: diffusers' Wan attention splits these image tokens off at a fixed 512 text tokens.
    # Wan 2.2 has none (its image-to-video conditions through the latents), and the kwarg stays None there.
    image_context_kwarg="encoder_hidden_states_image",
    # Wan 2.2 A14B: `transformer` denoises the high-noise steps, `transformer_2` the low-noise ones after the
    # pipeline's boundary_ratio; both are guided. Wan 2.1 and TI2V-5B have only the first.
    denoisers=("transformer", "transformer_2"),
    experts=("high", "low"),
    video=True,
    frame_step=4,  # the VAE packs 4 frames per latent after the first (Wan 2.1 and both Wan 2.2 VAEs)
    vae_dtype="float32",  # diffusers' Wan docs: the VAE decodes in float32
    tasks_loaded=("text", "img2video"),
)
