"""Builders for tiny random-weight pipelines saved as diffusers folders (offline, no hub)."""

from pathlib import Path

import torch

from vsf_cli.toy.text import QWEN_CHAT_TEMPLATE


def byte_clip_tokenizer(model_max_length: int | None = 77):
    """A byte-level CLIP tokenizer built in memory: every byte is a token, no merges (`model_max_length` None: the
    field left out)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", **limit)


def letter_t5_tokenizer(model_max_length: int | None = 512):
    """A unigram T5 tokenizer over single characters and a few words.

    `model_max_length` None leaves the field out, as some saved tokenizers do; transformers then reports about 1e30.
    """
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["▁" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["▁bike", "▁wheels", "▁cat", "▁red", "▁car", "▁a"]
    vocab = [(p, 0.0 if i < 3 else -float(len(p))) for i, p in enumerate(pieces)]
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    return T5Tokenizer(vocab=vocab, extra_ids=0, **limit)


def _clip_encoder(seed: int, vocab_size: int, hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModelWithProjection(cfg).eval()


def _t5_encoder(seed: int, vocab_size: int, umt5: bool = False):
    """A tiny random T5 encoder (SD3, Flux), or UMT5 encoder (Wan), of the same shape."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    model, config = (UMT5EncoderModel, UMT5Config) if umt5 else (T5EncoderModel, T5Config)
    torch.manual_seed(seed)
    return model(config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval()


def build_sd3(path: Path, *, dual_attention: bool = False, seed: int = 0, sample_size: int = 16) -> Path:
    """Save a tiny random StableDiffusion3Pipeline to `path` and return it."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    clip_tok = byte_clip_tokenizer()
    t5_tok = letter_t5_tokenizer()
    vocab = len(clip_tok)
    text_encoder = _clip_encoder(seed + 1, vocab, 16)
    text_encoder_2 = _clip_encoder(seed + 2, vocab, 16)
    t5 = _t5_encoder(seed + 3, len(t5_tok))
    torch.manual_seed(seed + 4)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        out_channels=16, qk_norm="rms_norm", dual_attention_layers=(0,) if dual_attention else (),
    )
    torch.manual_seed(seed + 5)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], latent_channels=16,
        norm_num_groups=4, sample_size=32, shift_factor=0.06, scaling_factor=1.5,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=clip_tok, text_encoder_2=text_encoder_2, tokenizer_2=clip_tok,
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )
    pipe.save_pretrained(path)
    return Path(path)


def build_sd3_lora(model: Path, folder: Path) -> Path:
    """Save a random rank-2 LoRA for the tiny SD3 transformer at `model`; returns the .safetensors file."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = SD3Transformer2DModel.from_pretrained(Path(model) / "transformer")
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(
        r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False,
    ))
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return Path(folder) / "pytorch_lora_weights.safetensors"


def build_flux(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random FluxPipeline (2 dual-stream + 2 single-stream blocks) to `path` and return it."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    clip_tok, t5_tok = byte_clip_tokenizer(), letter_t5_tokenizer()
    vocab = len(clip_tok)
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).eval()
    t5 = _t5_encoder(seed + 2, len(t5_tok))
    torch.manual_seed(seed + 3)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed + 4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], latent_channels=4,
        norm_num_groups=4, sample_size=32, shift_factor=0.06, scaling_factor=1.5, use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                        text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok)
    pipe.save_pretrained(path)
    return Path(path)


def _wan_transformer(seed: int, in_channels: int, out_channels: int = 16, **extra):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, out_channels=out_channels,
        in_channels=in_channels, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **extra,
    )


def _wan_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def build_wan(path: Path, *, seed: int = 0, image_to_video: bool = False) -> Path:
    """Save a tiny random WanPipeline (2 blocks, UMT5 text encoder, 3-channel Wan VAE) to `path` and return it.

    `image_to_video`: a WanImageToVideoPipeline instead, with a tiny CLIP vision encoder and the image-context
    projections in every cross-attention.
    """
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    t5_tok = letter_t5_tokenizer()
    umt5 = _t5_encoder(seed + 1, len(t5_tok), umt5=True)
    i2v = {"image_dim": 12, "added_kv_proj_dim": 16} if image_to_video else {}
    # I2V: noise, the first-frame mask and its latents
    transformer = _wan_transformer(seed + 2, 36 if image_to_video else 16, **i2v)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    parts = dict(tokenizer=t5_tok, text_encoder=umt5, transformer=transformer, vae=vae, scheduler=_wan_scheduler())
    if image_to_video:
        torch.manual_seed(seed + 4)
        encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=12, intermediate_size=24, num_hidden_layers=2,
                                                   num_attention_heads=2, image_size=32, patch_size=16)).eval()
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        pipe = WanImageToVideoPipeline(image_encoder=encoder, image_processor=processor, **parts)
    else:
        pipe = WanPipeline(**parts)
    pipe.save_pretrained(path)
    return Path(path)


def byte_qwen_tokenizer():
    """A byte-level Qwen2 tokenizer (Qwen3 uses it) built in memory: every byte a token, no merges, a chat template."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE  # the shape of Qwen3's template, as the Z-Image toy's
    return tokenizer


def _qwen3(model_class, tokenizer, seed: int, hidden: int, layers: int):
    """A tiny random Qwen3 text model (`Qwen3Model` or `Qwen3ForCausalLM`) over `tokenizer`'s vocabulary."""
    from transformers import Qwen3Config

    torch.manual_seed(seed)
    return model_class(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2, max_position_embeddings=1024,
    )).eval()


def build_zimage(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random ZImagePipeline (2 main layers, 2 + 2 refiners, a Qwen3 text encoder) to `path`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    tokenizer = byte_qwen_tokenizer()
    text_encoder = _qwen3(Qwen3Model, tokenizer, seed + 1, hidden=32, layers=2)
    torch.manual_seed(seed + 2)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=2, n_heads=2,
        n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[1024, 64, 64],
    )
    with torch.no_grad():  # the model initialises its pad tokens to zero; distinct ones show where padding goes
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], latent_channels=16,
        norm_num_groups=4, sample_size=32, shift_factor=0.06, scaling_factor=1.5, use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(path)
    return Path(path)


def _flux2_parts(seed: int, text_width: int, guidance: bool):
    """A tiny Flux2Transformer2DModel (2 double- and 2 single-stream blocks, 4-axis RoPE) and a 2-block Flux.2 VAE."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=text_width, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                             block_out_channels=[8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                             sample_size=32)
    with torch.no_grad():  # latent statistics other than (0, 1) show that the pipeline's normalisation runs
        vae.bn.running_mean.normal_(0, 0.1)
        vae.bn.running_var.uniform_(0.5, 1.5)
    return transformer, vae


def build_flux2_klein(path: Path, *, seed: int = 0, distilled: bool = True) -> Path:
    """Save a tiny random Flux2KleinPipeline (a 27-layer Qwen3 text encoder, whose layers 9, 18, 27 it stacks).

    `distilled` is model_index.json's is_distilled: True ignores guidance_scale > 1, False runs CFG as klein base.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3ForCausalLM

    tokenizer = byte_qwen_tokenizer()
    text_encoder = _qwen3(Qwen3ForCausalLM, tokenizer, seed + 1, hidden=16, layers=27)
    transformer, vae = _flux2_parts(seed + 2, 3 * 16, guidance=False)
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer, is_distilled=distilled)
    pipe.save_pretrained(path)
    return Path(path)


MISTRAL_CHAT_TEMPLATE = (  # the shape of Mistral Small 3's template for text: system prompt, then [INST] turns
    "{{ bos_token }}{% for m in messages %}{% for c in m['content'] %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ c['text'] }}[/SYSTEM_PROMPT]"
    "{% else %}[INST]{{ c['text'] }}[/INST]{% endif %}{% endfor %}{% endfor %}"
)


def byte_mistral_tokenizer():
    """A byte-level tokenizer with Mistral's special tokens and a text chat template (FLUX.2 dev's processor
    wraps a tokenizer like it; the processor itself needs torchvision, which the tests do without)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    specials = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"]
    for special in specials:
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                               pad_token="<pad>", additional_special_tokens=specials[4:])
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def build_flux2_dev(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random Flux2Pipeline: a Mistral3ForConditionalGeneration with 30 text layers (it stacks 10, 20,
    30) and a one-layer vision tower, and a transformer with the guidance embedding."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    tokenizer = byte_mistral_tokenizer()
    torch.manual_seed(seed + 1)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=MistralConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=30,
                                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024),
        vision_config=PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          image_size=32, patch_size=16, head_dim=8),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=1,
    )).eval()
    transformer, vae = _flux2_parts(seed + 2, 3 * 16, guidance=True)
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                         tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(path)
    return Path(path)


QWEN_VL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>")


def byte_qwen_vl_tokenizer():
    """A byte-level Qwen2 tokenizer with Qwen2.5-VL's vision tokens, built in memory."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for special in QWEN_VL_SPECIALS:
        vocab[special] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=list(QWEN_VL_SPECIALS[1:]))


def _qwen_vl_encoder(seed: int, tokenizer):
    """A tiny Qwen2.5-VL (2 text layers, 2 vision blocks) whose special ids are the tokenizer's."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                     "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"), "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                     "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [1]},
        vocab_size=len(tokenizer), **ids,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _qwen_transformer_and_vae(seed: int, zero_cond_t: bool = False):
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6), zero_cond_t=zero_cond_t,
    )
    torch.manual_seed(seed + 1)
    # Three downsamplings, 8x as the real VAE: the edit pipeline sizes its reference image to ~1024 x 1024.
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return transformer, vae


def build_qwen_image(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random QwenImagePipeline (2 double-stream blocks, a tiny Qwen2.5-VL encoder) to `path`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    tokenizer = byte_qwen_vl_tokenizer()
    text_encoder = _qwen_vl_encoder(seed + 1, tokenizer)
    transformer, vae = _qwen_transformer_and_vae(seed + 2)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(path)
    return Path(path)


def build_qwen_image_lora(model: Path, folder: Path) -> Path:
    """Save a random rank-2 LoRA for the tiny Qwen-Image transformer at `model` (as Lightning's: attention and MLP
    projections of both streams); returns the .safetensors file."""
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = QwenImageTransformer2DModel.from_pretrained(Path(model) / "transformer")
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]))
    QwenImagePipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return Path(folder) / "pytorch_lora_weights.safetensors"


def qwen_vl_processor(tokenizer):
    """Qwen2.5-VL's processor for small images, built in memory.

    transformers 5.24 checks every processor part's class, and without torchvision (which this project does not
    need) even an absent video processor fails that check; the image processor and tokenizer are checked by type
    below instead.
    """
    from unittest import mock

    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    assert isinstance(tokenizer, Qwen2TokenizerFast | type(tokenizer)) and isinstance(images, Qwen2VLImageProcessorPil)
    with mock.patch.object(Qwen2VLProcessor, "check_argument_for_proper_class", lambda self, name, arg: None):
        return Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer)


def build_qwen_image_edit(*, seed: int = 0, zero_cond_t: bool = False):
    """A tiny random QwenImageEditPlusPipeline in memory; `zero_cond_t` as Qwen-Image-Edit-2511."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline

    tokenizer = byte_qwen_vl_tokenizer()
    text_encoder = _qwen_vl_encoder(seed + 1, tokenizer)
    transformer, vae = _qwen_transformer_and_vae(seed + 2, zero_cond_t)
    return QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                     tokenizer=tokenizer, processor=qwen_vl_processor(tokenizer),
                                     transformer=transformer)


WAN22_BOUNDARIES = {"t2v": 0.875, "i2v": 0.9}  # the A14B model cards' (and diffusers folders') boundary_ratio


def build_wan22(path: Path, kind: str = "t2v", *, seed: int = 0, tokenizer=None) -> Path:
    """Save a tiny random Wan 2.2 pipeline to `path` and return it.

    `kind` "t2v" / "i2v": the A14B layout, a WanPipeline / WanImageToVideoPipeline with two experts of different
    weights (`transformer` for high noise, `transformer_2` for low) switched at the card's `boundary_ratio`; I2V
    has no image encoder and no image-context projections, only the first frame's latents as extra input channels.
    "ti2v": the TI2V-5B layout, one 48-channel transformer over the Wan 2.2 VAE (16x spatial with its 2x2
    patchify, 4x in time) and `expand_timesteps` (per-token timesteps; an image conditions the first latent frame).
    `tokenizer` replaces the UMT5 tokenizer (a test saves one without `model_max_length`).
    """
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

    t5_tok = tokenizer or letter_t5_tokenizer()
    parts = dict(tokenizer=t5_tok, text_encoder=_t5_encoder(seed + 1, len(t5_tok), umt5=True), scheduler=_wan_scheduler())
    torch.manual_seed(seed + 3)
    if kind == "ti2v":
        vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                               dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                               scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
        pipe = WanPipeline(transformer=_wan_transformer(seed + 2, 48, 48), vae=vae, expand_timesteps=True, **parts)
    else:
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        channels = 36 if kind == "i2v" else 16
        experts = {"transformer": _wan_transformer(seed + 2, channels),
                   "transformer_2": _wan_transformer(seed + 5, channels)}
        pipeline = WanImageToVideoPipeline if kind == "i2v" else WanPipeline
        pipe = pipeline(vae=vae, boundary_ratio=WAN22_BOUNDARIES[kind], **experts, **parts)
    pipe.save_pretrained(path)
    return Path(path)
