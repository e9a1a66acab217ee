"""Train a toy model: a 2x AutoencoderKL, then a transformer and its text encoders by flow matching.

    python -m vsf_cli.toy.train --out DIR [--arch sd3|zimage] [--minutes 80] [--steps N] [--seed 0] [--resume DIR]

`--arch sd3` is `--model toy` (MMDiT, CLIP-L + CLIP-G + T5); `--arch zimage` is `--model toy-z` (single-stream,
Qwen3), which reuses the SD3 toy's VAE (`--vae`) so that both draw the same latent space.

Data is rendered on the fly from the seeded world, so a run is reproducible from its seed and thread count.
On a shared machine use --threads 1: two threads on one free core spend most of their time waiting for each other.
A diffusers folder (EMA weights, fp16 safetensors) is written to DIR every --save-every minutes and at the end,
so a partial run is usable.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsf_cli.toy import MODEL_DIR, text, world

LATENT_CHANNELS = 4


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=16, sample_size=world.SIZE, mid_block_add_attention=False,
    )


def build_transformer(layers: int, heads: int, head_dim: int):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=world.SIZE // 2, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text.T5_WIDTH,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=2 * text.CLIP_WIDTH,
        out_channels=LATENT_CHANNELS, qk_norm="rms_norm", pos_embed_max_size=world.SIZE // 4,
    )


def build_zimage_transformer(layers: int, heads: int, head_dim: int):
    from diffusers import ZImageTransformer2DModel

    axes = [head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8]  # rotary dims: caption/frame, height, width
    return ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=LATENT_CHANNELS, dim=heads * head_dim,
        n_layers=layers, n_refiner_layers=2, n_heads=heads, n_kv_heads=heads, cap_feat_dim=text.QWEN_WIDTH,
        axes_dims=axes, axes_lens=[4 * text.QWEN_TOKENS, world.SIZE // 2, world.SIZE // 2],
    )


class SD3:
    """The MMDiT toy: three text encoders, pooled projections, the velocity noise - x0 at timestep 1000 t."""

    pipeline = "StableDiffusion3Pipeline"
    layers, heads, head_dim = 6, 5, 32

    def __init__(self):
        self.tokenizers = text.clip_tokenizer(), text.clip_tokenizer(), text.t5_tokenizer()

    def fresh(self, seed: int, args):
        encoders = text.encoders(seed + 10)
        torch.manual_seed(seed + 20)
        return build_transformer(args.layers, args.heads, args.head_dim), encoders

    def predict(self, m, x_t, t, captions):
        embeds, pooled = text.encode(*m[1:], text.Tokenized(*self.tokenizers, captions))
        return m[0](hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=embeds, pooled_projections=pooled).sample

    def parts(self, m, vae) -> dict:
        tok = self.tokenizers
        return dict(transformer=m[0], vae=vae, text_encoder=m[1], tokenizer=tok[0], text_encoder_2=m[2],
                    tokenizer_2=tok[1], text_encoder_3=m[3], tokenizer_3=tok[2])


class ZImage:
    """The single-stream toy: one Qwen3 encoder; the model takes 1 - t and returns x0 - noise, as Z-Image does."""

    pipeline = "ZImagePipeline"
    layers, heads, head_dim = 5, 4, 32

    def __init__(self):
        self.tokenizer = text.qwen_tokenizer()

    def fresh(self, seed: int, args):
        encoder = text.qwen_encoder(seed + 10, len(self.tokenizer))
        torch.manual_seed(seed + 20)
        return build_zimage_transformer(args.layers, args.heads, args.head_dim), (encoder,)

    def predict(self, m, x_t, t, captions):
        caps = text.encode_qwen(m[1], self.tokenizer, captions)
        out = m[0](list(x_t.unsqueeze(2).unbind(0)), 1 - t, caps, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def parts(self, m, vae) -> dict:
        return dict(transformer=m[0], vae=vae, text_encoder=m[1], tokenizer=self.tokenizer)


ARCHES = {"sd3": SD3, "zimage": ZImage}


def pixels(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae, rng: random.Random, steps: int, batch: int, log, check: int) -> None:
    """Reconstruction plus a small KL, so latents stay smooth enough to diffuse."""
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for step in range(1, steps + 1):
        x = pixels(world.batch(rng, batch)[0])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 1e-4 * kl
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            log(f"vae {step}/{steps} mse {F.mse_loss(rec, x).item():.5f} kl {kl.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        from vsf_cli.toy import detector

        def round_trip(img, _rng):
            out = vae.decode(vae.encode(pixels(img[None])).latent_dist.mean).sample
            return ((out[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()

        log(f"judge on VAE round trips: {detector.accuracy(check, degrade=round_trip)}")
        # SD3 normalises latents as (z - shift) * scale; fit both on fresh renders
        z = vae.encode(pixels(world.batch(random.Random(1), 512)[0])).latent_dist.mean
    vae.register_to_config(shift_factor=round(z.mean().item(), 4), scaling_factor=round(1 / z.std().item(), 4))


def save(path: Path, pipeline: str, parts: dict, dtype: torch.dtype) -> None:
    """Write the pipeline next to `path`, then swap it in, so a reader never sees a half-written folder."""
    import diffusers

    parts = {k: (copy.deepcopy(v).to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in parts.items()}
    pipe = getattr(diffusers, pipeline)(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0), **parts)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", choices=ARCHES, default="sd3", help="sd3: --model toy; zimage: --model toy-z")
    ap.add_argument("--vae", type=Path, default=MODEL_DIR / "vae", help="zimage: the trained VAE it reuses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1_000_000, help="stop after this many transformer steps")
    ap.add_argument("--minutes", type=float, default=80.0, help="stop after this much wall clock (VAE included)")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--layers", type=int, help="transformer blocks (default: sd3 6, zimage 5)")
    ap.add_argument("--heads", type=int, help="attention heads (default: sd3 5, zimage 4)")
    ap.add_argument("--head-dim", type=int, help="width per head (default 32)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints")
    ap.add_argument("--resume", type=Path, help="a folder this script saved: continue training its weights")
    ap.add_argument("--check", type=int, default=300, help="renders for the judge's accuracy on VAE round trips")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast: ~1.4x faster on CPUs with AVX512-BF16")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{(time.time() - start) / 60:6.1f} min] {msg}", flush=True)

    arch = ARCHES[args.arch]()
    for knob in ("layers", "heads", "head_dim"):
        if getattr(args, knob) is None:
            setattr(args, knob, getattr(arch, knob))
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    if args.resume:  # continue from a saved folder: its VAE is kept, its weights start a fresh optimiser
        import diffusers

        old = getattr(diffusers, arch.pipeline).from_pretrained(args.resume, dtype=torch.float32)
        vae, transformer = old.vae.eval().requires_grad_(False), old.transformer
        encoders = [getattr(old, k) for k in ("text_encoder", "text_encoder_2", "text_encoder_3") if hasattr(old, k)]
        log(f"resumed from {args.resume}")
    elif args.arch == "zimage":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae, dtype=torch.float32).eval().requires_grad_(False)
        transformer, encoders = arch.fresh(args.seed, args)
    else:
        vae = build_vae()
        train_vae(vae, rng, args.vae_steps, 32, log, args.check)
        transformer, encoders = arch.fresh(args.seed, args)
    trained = torch.nn.ModuleList([transformer, *encoders]).train()
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in trained.parameters())
    log(f"{args.arch} transformer + text encoders: {n_params / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=0.01)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    budget = args.minutes * 60

    dtype = getattr(torch, args.dtype)
    last_save, smooth, step = time.time(), None, 0
    while step < args.steps and time.time() - start < budget:
        step += 1
        progress = max(step / args.steps, (time.time() - start) / budget)
        lr = args.lr * min(1.0, step / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        imgs, captions, _ = world.batch(rng, args.batch)
        with torch.no_grad():
            z = (vae.encode(pixels(imgs)).latent_dist.mean - shift) * scale
        t = torch.sigmoid(torch.randn(args.batch))  # logit-normal, as SD3 trains
        noise = torch.randn_like(z)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * z + tt * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            pred = arch.predict(trained, x_t, t, captions)
        loss = F.mse_loss(pred.float(), noise - z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), trained.parameters()):
                e.lerp_(p, 1 - decay)
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"step {step} loss {smooth:.4f} lr {lr:.2e}")
        if time.time() - last_save > args.save_every * 60:
            save(args.out, arch.pipeline, arch.parts(ema, vae), dtype)
            last_save = time.time()
            log(f"checkpoint at step {step} -> {args.out}")
    save(args.out, arch.pipeline, arch.parts(ema, vae), dtype)
    log(f"done: {step} steps, loss {smooth:.4f}, saved {args.out}")


if __name__ == "__main__":
    main()
