"""A byte-level tokenizer built in code: no vocabulary file, no download.

Ids 0-255 are the raw bytes (so any UTF-8 text round-trips exactly), followed by the
special tokens. It is a regular `PreTrainedTokenizerFast`, so it saves and loads with
save_pretrained / from_pretrained like any hub tokenizer. It has no chat template, like a
base model's tokenizer: a `format: chat` Prompt is refused for it (specs/checks.py).
"""

from __future__ import annotations

EOS, PAD, BOS = "<|eos|>", "<|pad|>", "<|bos|>"
SPECIAL_TOKENS = (EOS, PAD, BOS)
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    # use_regex=False: one token per byte, no word splitting and no prefix space.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=BOS,
        padding_side="left",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token (common for BPE checkpoints) EOS as its pad.

    EOS rather than a new token: a new token would need a new embedding row the base model
    never learned. It is safe because every batch carries an attention mask and padded
    label positions are ignored, so the model never attends to or learns from padding.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
