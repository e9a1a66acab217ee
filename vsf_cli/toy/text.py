"""The toy models' text side: word-level CLIP, T5 and Qwen tokenizers over the world's vocabulary, and tiny encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsf_cli.toy import world

MAX_TOKENS = 20  # the longest caption is 18 words; CLIP adds BOS and EOS, T5 adds EOS
CLIP_WIDTH = 64  # each of CLIP-L and CLIP-G; together they fill T5_WIDTH, as 768 + 1280 fill 4096 in SD3 with room
T5_WIDTH = 128
QWEN_WIDTH = 128  # the Z-Image toy's Qwen3 encoder, and the transformer's cap_feat_dim
QWEN_TOKENS = 32  # the longest caption is 18 words, and the chat template adds 8 tokens
# The shape of Qwen3's chat template: the user's turn, then the assistant's turn that ZImagePipeline asks for.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def clip_tokenizer():
    """A CLIPTokenizer whose BPE merges spell each vocabulary word as one token; any other word is <|endoftext|>.

    The stock class keeps the pipeline's code path. Each word gets a chain of merges (g r -> gr, gr e -> gre, ...);
    a word whose letters another chain would merge first ("re" of "red" inside "green") has its chain moved ahead.
    """
    return _spelled_whole(_clip_tokenizer, list(world.VOCAB),
                          lambda tok, w: len(tok(w, add_special_tokens=False).input_ids))


def _spelled_whole(build, words: list[str], pieces):
    """build(order) for an order of the words' merge chains in which every word is one token (pieces(tok, w) == 1):
    a chain that another would split first is moved ahead, until none is."""
    order = words
    for _ in range(len(order)):
        tok = build(order)
        broken = [w for w in order if pieces(tok, w) != 1]
        if not broken:
            return tok
        order = broken + [w for w in order if w not in broken]
    raise RuntimeError(f"no merge order spells {broken} as single tokens")


def _clip_tokenizer(words: list[str]):
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for word in words:
        piece = word[0]
        for i, c in enumerate(word[1:], 1):
            nxt = c + "</w>" if i == len(word) - 1 else c
            if (piece, nxt) not in merges:
                merges.append((piece, nxt))
            piece += nxt
            vocab.setdefault(piece, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")


def t5_tokenizer():
    """A unigram T5Tokenizer: each vocabulary word is one piece; other text falls back to letters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -10.0)]
    pieces += [("▁" + w, -1.0) for w in world.VOCAB]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def qwen_tokenizer():
    """A byte-level Qwen2Tokenizer (Qwen3's) whose merges spell each vocabulary word as one token, with and without
    its leading space (`Ġcar`, and `car` opening a prompt); any other text falls back to bytes.

    Chains of merges as in `clip_tokenizer`, moved ahead when another chain would split them first.
    """
    words = [w for w in ["Ġ" + w for w in world.VOCAB] + list(world.VOCAB) + ["user", "assistant"] if len(w) > 1]
    return _spelled_whole(_qwen_tokenizer, words, lambda tok, w: len(tok.tokenize(w.replace("Ġ", " "))))


def _qwen_tokenizer(words: list[str]):
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges: list[tuple[str, str]] = []
    for word in words:
        piece = word[0]
        for c in word[1:]:
            if (piece, c) not in merges:
                merges.append((piece, c))
            piece += c
            vocab.setdefault(piece, len(vocab))
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>",
                         additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def qwen_encoder(seed: int, vocab_size: int):
    """A fresh Qwen3Model for the Z-Image toy: width 128, 3 layers (the pipeline reads the second-to-last)."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    return Qwen3Model(Qwen3Config(
        vocab_size=vocab_size, hidden_size=QWEN_WIDTH, intermediate_size=2 * QWEN_WIDTH, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=512,
    ))


def encode_qwen(text_encoder, tokenizer, captions: list[str]) -> list[torch.Tensor]:
    """Caption features as ZImagePipeline computes them (chat template, second-to-last layer, padding dropped),
    but with gradients for training."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=True) for c in captions]
    ids = tokenizer(chats, padding="longest", max_length=QWEN_TOKENS, truncation=True, return_tensors="pt")
    mask = ids.attention_mask.bool()
    hidden = text_encoder(input_ids=ids.input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return [h[m] for h, m in zip(hidden, mask)]


def encoders(seed: int):
    """Fresh CLIP-L, CLIP-G and T5 encoders sized for the toy vocabulary (about 0.7 M parameters together)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    vocab = len(clip_tokenizer())
    clips = []
    for i in range(2):
        torch.manual_seed(seed + i)
        cfg = CLIPTextConfig(
            vocab_size=vocab, hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=3,
            num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=CLIP_WIDTH,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        )
        clips.append(CLIPTextModelWithProjection(cfg))
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer()), d_model=T5_WIDTH, d_kv=32, d_ff=2 * T5_WIDTH, num_layers=2, num_heads=4,
        relative_attention_num_buckets=16, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    ))
    return clips[0], clips[1], t5


class Tokenized:
    """Token ids of a batch of captions, padded exactly as StableDiffusion3Pipeline.encode_prompt pads them."""

    def __init__(self, tokenizer, tokenizer_2, tokenizer_3, captions: list[str], max_sequence_length: int = MAX_TOKENS):
        pad = dict(padding="max_length", truncation=True, return_tensors="pt")
        self.clip = tokenizer(captions, max_length=tokenizer.model_max_length, **pad).input_ids
        self.clip_2 = tokenizer_2(captions, max_length=tokenizer_2.model_max_length, **pad).input_ids
        self.t5 = tokenizer_3(captions, max_length=max_sequence_length, add_special_tokens=True, **pad).input_ids


def encode(text_encoder, text_encoder_2, text_encoder_3, ids: Tokenized) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled_prompt_embeds) as the pipeline computes them, but with gradients for training."""
    hidden, pooled = [], []
    for encoder, tok_ids in ((text_encoder, ids.clip), (text_encoder_2, ids.clip_2)):
        out = encoder(tok_ids, output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    t5 = text_encoder_3(ids.t5)[0]
    clip = torch.cat(hidden, dim=-1)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)
