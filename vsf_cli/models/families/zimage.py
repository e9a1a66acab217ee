"""Z-Image: one single-stream attention over [image, caption]; Qwen3 negatives refined alone and carried beside.

Layout (docs/method.md §11). The model pads the caption to a multiple of 32 with a learned pad token and starts the
image's rotary positions after the padded caption, so a negative appended to the caption would move both. Instead:
- the negative is encoded as the pipeline encodes a prompt (chat template, Qwen3's second-to-last layer, no
  tokenizer padding) and refined by the two text-only `context_refiner` blocks on its own, exactly as that text
  would be refined as the caption: padded to 32 with the pad token, positions (1 + k, 0, 0). The refiners have no
  timestep input, so this runs once per render;
- VSF keeps only the negative's real tokens (flipped pad tokens would push away from padding); NAG and NASA,
  which encode their negative like a positive, keep the pads too;
- the negative is carried beside the sequence through every main layer (`Carrier`), at the end: [image, caption,
  negative], keeping its caption positions. The image's and the positive's tokens, padding and positions are the
  stock ones, so an infinite offset reproduces the stock output.
"""

from vsf_cli import private
from vsf_cli.errors import UsageError
from vsf_cli.models.families import Carrier, Family, refuse_cfg

SEQ_MULTIPLE = 32  # diffusers' SEQ_MULTI_OF: caption and image lengths are padded to multiples of it


def encode_negative(pipe, text: str, padded: bool = False, max_sequence_length: int | None = None):
    """The negative as the pipeline encodes a prompt: (1, tokens, cap_feat_dim), its padding already dropped.

    Cut at the call's `max_sequence_length` (None: the pipeline's default, 512), as the pipeline cuts the
    positive. `padded` changes nothing here; the transformer's own pad tokens are added in `prepare_negative`.
    """
    import torch

    length = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    with torch.no_grad():
        embeds = pipe.encode_prompt(text, device=private.execution_device(pipe), do_classifier_free_guidance=False,
                                    **length)[0]
    return embeds[0][None].to("cpu")


def padded_length(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


def positive_tokens(kwargs: dict) -> int:
    """Caption tokens in the main layers' sequence: the longest caption of the batch, padded to 32."""
    captions = kwargs["cap_feats"]
    if isinstance(captions[0], list):
        raise UsageError("Z-Image's omni mode (several images per prompt) is not supported")
    return max(padded_length(len(c)) for c in captions)


def prepare_negative(transformer, tokens, mask, padded: bool):
    """Refine each negative as the model refines a caption alone; (hidden, rotary, key mask or None).

    hidden is (batch, n, dim), rotary (batch, n, head_dim / 2) complex, as the main layers take them; n is the
    longest negative (with its pads when `padded`), and the key mask marks the shorter ones' padding.
    """
    import torch

    from vsf_cli.guidance.install import pad_negatives

    hidden, rotary = [], []
    for b in range(tokens.shape[0]):
        n = int(mask[b].sum()) if mask is not None else tokens.shape[1]
        states = transformer.cap_embedder(tokens[b, :n])
        total = padded_length(n)
        states = torch.cat([states, transformer.cap_pad_token.to(states.dtype).expand(total - n, -1)])
        ids = torch.zeros(total, 3, dtype=torch.int32, device=states.device)
        ids[:, 0] = torch.arange(1, total + 1, device=states.device)
        freqs = transformer.rope_embedder(ids)
        x = states[None]
        for layer in transformer.context_refiner:
            x = layer(x, None, freqs[None])
        keep = total if padded else n
        hidden.append(x[:, :keep])
        rotary.append(freqs[None, :keep])
    batch, device = len(hidden), hidden[0].device
    hidden, key_mask = pad_negatives(hidden, batch, device, hidden[0].dtype)
    return hidden, pad_negatives(rotary, batch, device, rotary[0].dtype)[0], key_mask


FAMILY = Family(
    name="zimage",
    label="Z-Image",
    pipelines={"text": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"},
    default_model="zimage-turbo",
    hub_names=("z-image",),
    attention="joint",
    # The main layers' attention; the image-only noise refiners and text-only context refiners hold no pair.
    attentions=lambda transformer: [layer.attention for layer in transformer.layers],
    encode_negative=encode_negative,
    text_kwarg="cap_feats",
    carrier=Carrier(blocks=lambda transformer: list(transformer.layers), hidden="x", mask="attn_mask",
                    rotary="freqs_cis", positive_tokens=positive_tokens, prepare=prepare_negative),
    check_call=refuse_cfg,  # guidance_scale > 0 batches an unconditional pass into the forward
    cfg_separate_pass=False,
    cfg_off_at=0.0,
)
