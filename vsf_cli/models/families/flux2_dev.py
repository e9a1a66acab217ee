"""FLUX.2 [dev]: klein's transformer layout with Mistral Small 3 negatives and a distilled guidance embedding.

The same `Flux2Transformer2DModel` as klein (docs/method.md §12), so the same blocks are guided and the negative
gets the same positions. The prompt is Mistral's hidden layers 10, 20 and 30 stacked, after the pipeline's system
message, padded to 512. `guidance_scale` feeds the guidance embedding, which stays the positive's; the pipeline has
no CFG and no negative prompt.
"""

from vsf_cli.models.families import Family
from vsf_cli.models.families.flux import extend_kwargs
from vsf_cli.models.families.flux2_klein import encode, transformer_attentions

CFG_REFUSED = ("FLUX.2 [dev] has no classifier-free guidance and no negative prompt (its --guidance-scale feeds a "
               "distilled guidance embedding); use vsf, nag or nasa")


def system_mask(pipe, text: str, length: int):
    """dev's tokenization of a prompt (its system message, then the prompt, padded to `length`): its mask."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    tokens = pipe.tokenizer.apply_chat_template(
        format_input(prompts=[text], system_message=pipe.system_message), add_generation_prompt=False,
        tokenize=True, return_dict=True, return_tensors="pt", padding="max_length", truncation=True, max_length=length)
    return tokens["attention_mask"]


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """Mistral states of the negative, layers 10/20/30 stacked, (1, tokens, joint_attention_dim); unpadded for VSF.

    The system message's tokens stay, as in the positive; padding is on the right, as on klein.
    """
    return encode(pipe, text, padded, max_sequence_length, system_mask)


FAMILY = Family(
    name="flux2_dev",
    label="FLUX.2 [dev]",
    pipelines={"text": "Flux2Pipeline", "img2img": "Flux2Pipeline"},  # image conditioning; no inpainting pipeline
    default_model="flux2-dev",
    hub_names=("flux.2", "flux2"),
    attention="joint",
    text_first=True,
    attentions=transformer_attentions,
    encode_negative=encode_negative,
    extend_kwargs=extend_kwargs,
    cfg_argument=None,  # guidance_scale is the distilled guidance embedding
    cfg_refused=CFG_REFUSED,
    img2img_strength=False,
)
