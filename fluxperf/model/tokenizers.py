"""Local tokenizers for the synthetic pipelines (nothing is downloaded).

A word-level vocabulary built with the `tokenizers` library and wrapped in transformers'
`PreTrainedTokenizerFast`, which is all FluxPipeline needs (padding="max_length", truncation,
return_tensors="pt", batch_decode, model_max_length). Unknown words map to <unk>; the ids are as good as
any for random weights, and the vocabulary size matches the text encoder's embedding table.
"""

from __future__ import annotations

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
_WORDS = (
    "a photo of an the cat dog car tree house city street sky sea mountain red blue green yellow black white "
    "in on at with and by near under over small large old new bright dark night day forest river portrait "
    "painting drawing render cinematic lighting detailed sharp soft colorful abstract landscape close up view"
).split()


def make_tokenizer(vocab_size: int, model_max_length: int, *, bos: bool):
    """A word-level fast tokenizer with `vocab_size` ids.

    Args:
        vocab_size: size of the text encoder's vocabulary (ids never exceed it).
        model_max_length: 77 for CLIP, 256/512 for T5.
        bos: prepend <s> (CLIP does, T5 does not); </s> is always appended.

    Example:
        >>> tok = make_tokenizer(110, 77, bos=True)
        >>> tok("a photo of a cat")["input_ids"][:2]
        [2, 4]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, BOS, EOS]
    words = specials + list(_WORDS)
    words += [f"w{i}" for i in range(max(0, vocab_size - len(words)))]
    vocab = {w: i for i, w in enumerate(words[:vocab_size])}
    if len(vocab) < len(specials) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small; need at least {len(specials) + 1}.")
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    else:
        tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length,
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
    )
