"""A byte-level BPE tokenizer trained locally (``tokenizers``) on a dataset task's training problems: what the
tiny preset reads math with (its character tokenizer knows only digits, ``+`` and ``=``).

Cached under ``<cache>/tokenizers/<hash>/`` (the hash of the training rows' source, the prompt format and the
vocabulary size), so every run on the same data shares one; trained in seconds on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from occctl.spec import TaskSpec

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # the ids the tiny preset's character tokenizer uses
TOKENIZER_FORMAT = 1  # bump when the training recipe changes


def tokenizer_key(task: TaskSpec, vocab_size: int = VOCAB_SIZE) -> str:
    from occctl.tasks.dataset import is_file_ref, resolve_file

    source: dict[str, Any] = {"ref": task.train}
    if is_file_ref(task.train):
        path = resolve_file(task.train)
        stat = path.stat()
        source = {"name": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    payload = {"format": TOKENIZER_FORMAT, "source": source, "prompt": task.prompt, "vocab": vocab_size}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def task_tokenizer(task: TaskSpec, vocab_size: int = VOCAB_SIZE):
    """The HF tokenizer (left padding, ``<bos>`` prepended) for a dataset task; trained now if not cached."""
    from transformers import PreTrainedTokenizerFast

    from occctl.rundir import cache_root

    folder = cache_root() / "tokenizers" / tokenizer_key(task, vocab_size)
    file = folder / "tokenizer.json"
    if not file.is_file():
        _train(task, vocab_size, folder)
    return PreTrainedTokenizerFast(tokenizer_file=str(file), bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")


def _train(task: TaskSpec, vocab_size: int, folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from occctl.eval.prompts import TEMPLATES
    from occctl.tasks.dataset import train_problems

    texts = [TEMPLATES[task.prompt].format(problem=p.prompt) + " " + p.answer for p in train_problems(task)]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(texts, trainer=trainer)
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"tokenizer.json.{os.getpid()}.tmp"
    raw.save(str(tmp))
    tmp.replace(folder / "tokenizer.json")  # atomic: a concurrent run reads a whole file or trains its own
