"""BytePiece: a byte-level Unigram tokenizer with n-gram-LM training and exact random segmentation.

Posts: "BytePiece：更纯粹、更高压缩率的Tokenizer" (2023-09-07, kexue.fm/archives/9752), "随机分词浅探：从Viterbi
Decoding到Viterbi Sampling" (2023-09, kexue.fm/archives/9768) and "随机分词再探：从Viterbi Sampling到完美采样算法"
(2023-10-16, kexue.fm/archives/9811).

>>> from kexue.tokenizers import Trainer, Tokenizer
>>> tok = Trainer(order=6, max_vocab_size=5000, min_count=3).train(texts)   # doctest: +SKIP
>>> ids = tok.encode("今天天气不错")                                          # doctest: +SKIP
>>> tok.decode(ids), tok.tokenize("今天天气不错", alpha=0.2, seed=0)           # doctest: +SKIP

The hot paths run in a compiled extension (``kexue.tokenizers._core``, built with the package). If it is not
built, everything falls back silently to the pure-Python reference (:mod:`kexue.tokenizers.reference`),
which gives identical results, only slower; ``HAVE_COMPILED_CORE`` tells which, and ``core="compiled"``
raises ``ImportError`` instead of falling back.
"""

from kexue.tokenizers._backend import HAVE_COMPILED_CORE
from kexue.tokenizers.corpus import FileCorpus
from kexue.tokenizers.ngrams import NgramCounts, NgramLM, build_lm, merge_ngram_counts
from kexue.tokenizers.tokenizer import Tokenizer
from kexue.tokenizers.trainer import Trainer, count_ngrams_shard, count_pieces_shard, merge_piece_counts

__all__ = [
    "HAVE_COMPILED_CORE",
    "FileCorpus",
    "NgramCounts",
    "NgramLM",
    "Tokenizer",
    "Trainer",
    "build_lm",
    "count_ngrams_shard",
    "count_pieces_shard",
    "merge_ngram_counts",
    "merge_piece_counts",
]
