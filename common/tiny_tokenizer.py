"""A byte-level BPE tokenizer trained on a small English corpus (no download): what the tiny
random test models (model/tiny.py's Llama, captioner/tiny_vlm.py's Qwen2-VL) tokenize with."""

from __future__ import annotations


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    words = ("red green blue yellow orange purple pink cyan brown white gray black circle square "
             "triangle sale open hello cafe stop jazz new taxi love a an the one two three four five six small medium large left right top bottom center "
              "middle above below of and on in at with is are sits sit word written letters picture "
              "image flat simple background shapes plain style clean graphic solid colors rgb first "
              "second third the capital of france is paris photo of a cat dog tree house sky").split()
    return [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4


def build_bpe_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a small English corpus, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
