"""Stable Diffusion 3 / 3.5 (MMDiT) adapter: unpadded negative encoding and the joint-attention processor."""

import torch
import torch.nn.functional as F

from vsf_cli.errors import UsageError

attention = "joint"
text_kwarg = "encoder_hidden_states"
T5_MAX_TOKENS = 256  # the pipelines' default max_sequence_length for the positive


@torch.no_grad()
def encode_negative(pipe, text: str, padded: bool = False) -> torch.Tensor:
    """Encode a negative prompt as (1, tokens, joint_attention_dim) text-stream tokens.

    Unpadded (VSF, docs/method.md §2.1): CLIP-L and CLIP-G penultimate states of BOS..EOS (the layer SD3 uses for the
    positive) joined on channels and zero-padded to the T5 width, then T5 tokens with EOS. Padding tokens would
    also get flipped values, so there are none. Padded: exactly the pipeline's own positive encoding.
    """
    device = pipe._execution_device
    if padded:
        embeds = pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, device=device,
                                    do_classifier_free_guidance=False, max_sequence_length=T5_MAX_TOKENS)[0]
        return embeds.to("cpu")
    clip = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        clip.append(encoder(ids.to(device), output_hidden_states=True).hidden_states[-2])
    n = min(c.shape[1] for c in clip)  # the two CLIP tokenizers share a vocabulary, so n is the same in practice
    width = pipe.transformer.config.joint_attention_dim
    tokens = F.pad(torch.cat([c[:, :n] for c in clip], dim=-1), (0, width - clip[0].shape[-1] - clip[1].shape[-1]))
    if pipe.text_encoder_3 is not None:
        ids = pipe.tokenizer_3(text, truncation=True, max_length=T5_MAX_TOKENS, return_tensors="pt").input_ids
        t5 = pipe.text_encoder_3(ids.to(device))[0]
        tokens = torch.cat([tokens.to(t5.dtype), t5], dim=1)
    return tokens.to("cpu")


def extend_kwargs(kwargs: dict, added: int) -> dict:
    """SD3 has no text positions to extend."""
    return kwargs


def check_call(pipe) -> None:
    """VSF replaces CFG; with guidance_scale > 1 the SD3 pipeline would batch an unconditional pass."""
    if getattr(pipe, "do_classifier_free_guidance", False):
        raise UsageError(
            f"VSF runs at guidance_scale <= 1 (got {pipe.guidance_scale}); "
            "use guidance_scale=0 for turbo models, or method 'cfg' for classifier-free guidance"
        )


def joint_attentions(transformer) -> list[torch.nn.Module]:
    """The joint attention of every block; SD3.5 Medium's image-only `attn2` is left alone."""
    return [block.attn for block in transformer.transformer_blocks]


class JointProcessor:
    """diffusers' JointAttnProcessor2_0 projections, with the attention call handed to the guidance kernel."""

    def __init__(self, state, original) -> None:
        self.state = state
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if not self.state.active or encoder_hidden_states is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        tq = attn.add_q_proj(encoder_hidden_states)
        tk = attn.add_k_proj(encoder_hidden_states)
        tv = attn.add_v_proj(encoder_hidden_states)
        inner = k.shape[-1]
        q, k, v, tq, tk, tv = (x.view(batch, -1, attn.heads, inner // attn.heads).transpose(1, 2) for x in (q, k, v, tq, tk, tv))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if attn.norm_added_q is not None:
            tq = attn.norm_added_q(tq)
        if attn.norm_added_k is not None:
            tk = attn.norm_added_k(tk)

        image, text = self.state.attend((q, k, v), tq, tk, tv)
        image = image.transpose(1, 2).reshape(batch, -1, inner).to(q.dtype)
        text = text.transpose(1, 2).reshape(batch, -1, inner).to(q.dtype)
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        image = attn.to_out[1](attn.to_out[0](image))
        return image, text
