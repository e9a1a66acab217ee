"""Wan 2.1 adapter: unpadded UMT5 negative encoding and the cross-attention (`attn2`) processor."""

import torch
import torch.nn.functional as F

from vsf_cli.errors import UsageError

attention = "cross"
text_kwarg = "encoder_hidden_states"


@torch.no_grad()
def encode_negative(pipe, text: str) -> torch.Tensor:
    """Encode a negative prompt as (1, n_N, text_dim) UMT5 states with EOS and no padding (docs/method.md §4.1).

    The text is cleaned and tokenized as the pipeline does its positive; padding would be flipped too, so there is none.
    """
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = pipe.tokenizer(prompt_clean(text), truncation=True, max_length=pipe.tokenizer.model_max_length,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = pipe._execution_device
    states = pipe.text_encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
    return states.to("cpu")


def check_call(pipe) -> None:
    """Wan 2.2's two-expert pipelines switch to `transformer_2` mid-way, which is not patched."""
    if getattr(pipe, "transformer_2", None) is not None:
        raise UsageError("Wan 2.2 two-expert pipelines (transformer_2) are not supported yet; use Wan 2.1")


def cross_attentions(transformer) -> list[torch.nn.Module]:
    """Every block's cross-attention to the text; self-attention (`attn1`) is left alone."""
    return [block.attn2 for block in transformer.blocks]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1)).transpose(1, 2)  # (B, S, H*D) -> (B, H, S, D)


class CrossProcessor:
    """diffusers' WanAttnProcessor projections, with the text attention handed to the guidance kernel."""

    def __init__(self, state, original) -> None:
        self.state = state
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if not self.state.active or encoder_hidden_states is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections

        image_context = None
        if attn.add_k_proj is not None:  # image-to-video: image-context tokens precede the text, which we sized
            n_image = encoder_hidden_states.shape[1] - self.state.n_text
            image_context, encoder_hidden_states = encoder_hidden_states[:, :n_image], encoder_hidden_states[:, n_image:]
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = _heads(attn.norm_q(query), attn.heads), _heads(attn.norm_k(key), attn.heads), _heads(value, attn.heads)
        out = self.state.attend(query, key, value)
        if image_context is not None:  # attended on its own and added, as the stock processor does; never flipped
            key_image, value_image = _get_added_kv_projections(attn, image_context)
            key_image = _heads(attn.norm_added_k(key_image), attn.heads)
            out = out + F.scaled_dot_product_attention(query, key_image, _heads(value_image, attn.heads))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))
