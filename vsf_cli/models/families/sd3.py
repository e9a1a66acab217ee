"""Stable Diffusion 3 / 3.5: joint attention with the text after the image; CLIP-L, CLIP-G and T5 negatives."""

from vsf_cli import private
from vsf_cli.models.families import Family, refuse_cfg

T5_MAX_TOKENS = 256  # the pipelines' default max_sequence_length for the positive


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """Encode a negative prompt as (1, tokens, joint_attention_dim) text-stream tokens.

    Unpadded (VSF, docs/method.md §2.1): CLIP-L and CLIP-G penultimate states of BOS..EOS (the layer SD3 uses for the
    positive) joined on channels and zero-padded to the T5 width, then T5 tokens with EOS. Padding tokens would
    also get flipped values, so there are none. Padded: exactly the pipeline's own positive encoding.
    T5 is cut at the call's `max_sequence_length`, as the pipeline cuts the positive; CLIP at its encoder's
    position table (77), never at the tokenizer's `model_max_length`, which a tokenizer saved without it reports
    as about 1e30.
    """
    import torch
    import torch.nn.functional as F

    device = private.execution_device(pipe)
    length = max_sequence_length or T5_MAX_TOKENS
    with torch.no_grad():
        if padded:
            embeds = pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, device=device,
                                        do_classifier_free_guidance=False, max_sequence_length=length)[0]
            return embeds.to("cpu")
        clip = []
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tokenizer(text, truncation=True, max_length=encoder.config.max_position_embeddings,
                            return_tensors="pt").input_ids
            clip.append(encoder(ids.to(device), output_hidden_states=True).hidden_states[-2])
        n = min(c.shape[1] for c in clip)  # the two CLIP tokenizers share a vocabulary, so n is the same in practice
        width = pipe.transformer.config.joint_attention_dim
        tokens = F.pad(torch.cat([c[:, :n] for c in clip], dim=-1), (0, width - clip[0].shape[-1] - clip[1].shape[-1]))
        if pipe.text_encoder_3 is not None:
            ids = pipe.tokenizer_3(text, truncation=True, max_length=length, return_tensors="pt").input_ids
            t5 = pipe.text_encoder_3(ids.to(device))[0]
            tokens = torch.cat([tokens.to(t5.dtype), t5], dim=1)
    return tokens.to("cpu")


FAMILY = Family(
    name="sd3",
    label="SD3",
    pipelines={"text": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
               "inpaint": "StableDiffusion3InpaintPipeline"},
    default_model="sd35-large-turbo",
    hub_names=("stable-diffusion-3",),
    attention="joint",
    # The joint attention of every block; SD3.5 Medium's image-only `attn2` holds no text and is left alone.
    attentions=lambda transformer: [block.attn for block in transformer.transformer_blocks],
    encode_negative=encode_negative,
    check_call=refuse_cfg,  # guidance_scale > 1 would batch an unconditional pass into the forward
    cfg_separate_pass=False,  # both CFG passes run as one batched forward: VSF and CFG exclude each other
    inpaint_channels=(16, 33),  # latents alone, or latents + mask + masked image
)
