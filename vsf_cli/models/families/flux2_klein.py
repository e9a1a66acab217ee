"""FLUX.2 [klein]: joint attention with the text first, in double- and single-stream blocks; Qwen3 negatives.

Layout (docs/method.md §12). The prompt is Qwen3's hidden layers 9, 18 and 27 stacked on channels, padded to 512
tokens that the transformer does not mask, and every text token k sits at rotary position (0, 0, 0, k). The negative
is encoded the same way with its padding dropped (kept for NAG and NASA), appended after the positive's 512 tokens
as the collector N0, and given the positions a prompt's tokens get, (0, 0, 0, k), as Flux.1 copies the positive's
first rows. Double-stream blocks join [text, image] in `Flux2AttnProcessor`; single-stream blocks hold one sequence
that `Flux2ParallelSelfAttnProcessor` projects with the MLP input in one matrix. Both run stock: only their
attention call over [positive, N0, image] is replaced.
"""

from vsf_cli import private
from vsf_cli.models.families import Family
from vsf_cli.models.families.flux import extend_kwargs

CFG_REFUSED = ("FLUX.2 [klein]'s pipelines take no negative prompt: their CFG (base models, --guidance-scale > 1) "
               "always uses an empty one, and the distilled models ignore guidance; use vsf, nag or nasa")


def transformer_attentions(transformer) -> list:
    """Every double-stream and every single-stream block's attention: the negative is in the sequence of both."""
    return ([block.attn for block in transformer.transformer_blocks]
            + [block.attn for block in transformer.single_transformer_blocks])


def encode(pipe, text: str, padded: bool, max_sequence_length: int | None, prompt_mask):
    """The pipeline's own `encode_prompt` of `text`, (1, tokens, joint_attention_dim), without its padding unless
    `padded`. `prompt_mask(pipe, text, length)` is the tokenizer's attention mask for that encoding (1, length);
    `max_sequence_length` None is the pipeline's own default (512).
    """
    import torch

    length = max_sequence_length or pipe.tokenizer_max_length
    with torch.no_grad():
        embeds = pipe.encode_prompt(text, device=private.execution_device(pipe), max_sequence_length=length)[0]
    if padded:
        return embeds.to("cpu")
    keep = prompt_mask(pipe, text, length)[0].bool().to(embeds.device)
    return embeds[:, keep].to("cpu")


def chat_mask(pipe, text: str, length: int):
    """klein's tokenization of a prompt (the Qwen chat template, thinking off, padded to `length`): its mask."""
    chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False)
    return pipe.tokenizer(chat, padding="max_length", truncation=True, max_length=length,
                          return_tensors="pt").attention_mask


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """Qwen3 states of the negative, layers 9/18/27 stacked, (1, tokens, joint_attention_dim); unpadded for VSF.

    The chat template's own tokens stay, as in the positive; the tokenizer pads on the right, so a prompt's real
    tokens are its first rows and the negative's positions (0, 0, 0, k) are those it would have as the prompt.
    """
    return encode(pipe, text, padded, max_sequence_length, chat_mask)


FAMILY = Family(
    name="flux2_klein",
    label="FLUX.2 [klein]",
    # Image conditioning (reference images) is the text pipeline's own `image`; inpainting has its own pipeline.
    pipelines={"text": "Flux2KleinPipeline", "img2img": "Flux2KleinPipeline", "inpaint": "Flux2KleinInpaintPipeline"},
    default_model="flux2-klein-4b",
    hub_names=("flux.2-klein", "flux2-klein"),
    attention="joint",
    text_first=True,
    attentions=transformer_attentions,
    encode_negative=encode_negative,
    extend_kwargs=extend_kwargs,  # the positive's first rows: (0, 0, 0, k) for the negative's token k
    # guidance_scale > 1 is CFG on the base models, as its own forward in cache_context("uncond"), which runs
    # unguided; the distilled models (is_distilled in model_index.json) ignore it.
    cfg_refused=CFG_REFUSED,
    img2img_strength=False,
)
