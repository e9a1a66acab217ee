"""Flux.1 (MMDiT with dual- and single-stream blocks, text first) adapter: negative encoding, ids, processor."""

import torch

attention = "joint"
text_kwarg = "encoder_hidden_states"
T5_MAX_TOKENS = 512


@torch.no_grad()
def encode_negative(pipe, text: str, padded: bool = False) -> torch.Tensor:
    """T5 states of the negative: (1, tokens, joint_attention_dim); unpadded for VSF, padded like the positive else.

    CLIP only makes Flux's pooled vector, which stays the positive's.
    """
    device = pipe._execution_device
    if padded:
        return pipe.encode_prompt(prompt=text, prompt_2=None, device=device)[0].to("cpu")
    ids = pipe.tokenizer_2(text, truncation=True, max_length=T5_MAX_TOKENS, return_tensors="pt").input_ids
    return pipe.text_encoder_2(ids.to(device))[0].to("cpu")


def extend_kwargs(kwargs: dict, added: int) -> dict:
    """Give the appended text tokens position ids by the positive's own convention (its first rows).

    Today the pipeline's text ids are all zero; copying rows keeps whatever it uses, and N1 later reuses N0's
    rotated keys, so both negative instances get exactly the same rotary embedding.
    """
    txt_ids = kwargs["txt_ids"]
    txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
    rows = txt_ids[torch.arange(added, device=txt_ids.device) % txt_ids.shape[0]]
    return {**kwargs, "txt_ids": torch.cat([txt_ids, rows], dim=0)}


def check_call(pipe) -> None:
    """Nothing to refuse here: Flux's guidance_scale is not CFG, and true CFG stays off unless asked for."""


def joint_attentions(transformer) -> list[torch.nn.Module]:
    """Every dual-stream and every single-stream block: the negative is in the joint sequence of both."""
    return [b.attn for b in transformer.transformer_blocks] + [b.attn for b in transformer.single_transformer_blocks]


class JointProcessor:
    """diffusers' FluxAttnProcessor projections and RoPE, with the attention call handed to the guidance kernel."""

    def __init__(self, state, original) -> None:
        self.state = state
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if not self.state.active or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        q, k, v, tq, tk, tv = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (x.unflatten(-1, (-1, attn.head_dim)) for x in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:  # dual-stream: text and image arrive apart, text goes first
            tq, tk, tv = (x.unflatten(-1, (-1, attn.head_dim)) for x in (tq, tk, tv))
            tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
            q, k, v = torch.cat([tq, q], 1), torch.cat([tk, k], 1), torch.cat([tv, v], 1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)

        n = self.state.n_text
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # kernels work on (batch, heads, tokens, head_dim)
        image, text = self.state.attend((q[:, :, n:], k[:, :, n:], v[:, :, n:]), q[:, :, :n], k[:, :, :n], v[:, :, :n])
        out = torch.cat([text, image], dim=2).transpose(1, 2).flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:  # single-stream: the block splits text and image itself
            return out
        text, image = out[:, :n], out[:, n:]
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())
