# SPDX-License-Identifier: Apache-2.0
"""Tiny random-weight models, built offline, for tests that run real vLLM.

There is no model hub in CI, so the tokenizer is trained on an inline corpus
and the weights come from a fixed seed. ``hf_greedy`` is the reference that
vLLM's greedy output must equal token for token.
"""

import copy
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

CORPUS = """\
Hello, my name is Ada. I live in a small town by the sea, and every morning I
walk to the harbour to watch the boats come in. The fishermen wave and the
gulls cry over the water while the sun rises behind the hills.
The capital of France is Paris. Paris is known for its museums, its cafes and
the long river that runs through the middle of the city. Many people visit it
every year to see the old churches, the bridges and the gardens.
The future of AI is hard to predict. Models learn from large amounts of text
and can answer questions, write stories and translate between languages.
Engineers measure how fast they run and how much memory they need.
The president of the United States lives in the White House. Once upon a time
there was a little girl who loved to read books about stars, planets and the
moon. She asked her teacher what is the answer to every question, and the
teacher smiled and said that learning never ends.
"""
SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}
# BOS comes from the template, so the rendered prompt must be encoded without
# special tokens (as vLLM and apply_chat_template(tokenize=True) both do).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
VOCAB_SIZE = 512
# 10x the usual 0.02, which makes greedy output repeat one token. At 0.2 it
# varies, and the smallest top-1/top-2 logit gap seen (~0.004) is still ~500x
# the fp32 difference between HF's and vLLM's kernels (<1e-5).
INIT_STD = 0.2
SEED = 1234
KINDS = ("qwen3", "opt", "llama")


def build_tokenizer(dest: Path, model_max_length: int = 512) -> dict[str, int]:
    """Train a byte-level BPE tokenizer on CORPUS and save it into ``dest``.

    Like Llama's, it prepends BOS when encoding with special tokens, which is
    what both vLLM (for text prompts) and ``hf_greedy`` do. Returns the
    special tokens' ids, for a model config. (The GPU benchmarks use it too:
    there is no model hub there either.)
    """
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tok.token_to_id(bos))],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=CHAT_TEMPLATE, **SPECIAL_TOKENS
    )
    wrapped.model_max_length = model_max_length
    wrapped.save_pretrained(dest)
    return {
        f"{kind}_id": tok.token_to_id(SPECIAL_TOKENS[kind])
        for kind in ("bos_token", "eos_token", "pad_token")
    }


def _config(kind: str, vocab_size: int, token_ids: dict[str, int]) -> PretrainedConfig:
    """Config of a tiny model of ``kind`` (head_dim 32: vLLM's CPU minimum)."""
    common = dict(
        vocab_size=vocab_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        dtype="float32",
        **token_ids,
    )
    if kind == "qwen3":  # like Qwen3-0.6B: tied embeddings, heads*head_dim > hidden
        return Qwen3Config(
            hidden_size=64,
            intermediate_size=192,
            num_key_value_heads=2,
            head_dim=32,
            tie_word_embeddings=True,
            initializer_range=INIT_STD,
            **common,
        )
    if kind == "opt":  # OPT has no GQA and calls its init std ``init_std``
        return OPTConfig(
            hidden_size=128,
            ffn_dim=256,
            word_embed_proj_dim=128,
            init_std=INIT_STD,
            **common,
        )
    if kind == "llama":
        return LlamaConfig(
            hidden_size=128,
            intermediate_size=256,
            num_key_value_heads=2,
            initializer_range=INIT_STD,
            **common,
        )
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def build_model(
    kind: str, dest: Path, seed: int = SEED, name: str | None = None
) -> Path:
    """Build the tiny ``kind`` model into ``dest/kind`` (or ``dest/name``)
    once and return it.

    Another ``seed`` gives a checkpoint of the same shape (config and
    tokenizer) with other weights: what a swap takes. It is built in a
    temporary folder and renamed into place, so an existing folder is
    always complete.
    """
    out = dest / (name or kind)
    if out.exists():
        return out
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=dest))
    try:
        build_tokenizer(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        token_ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        config = _config(kind, len(tokenizer), token_ids)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = GenerationConfig(**token_ids)
        model.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:
            if not out.exists():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# Every projection vLLM's Llama and Qwen3 take LoRA on.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
LORA_TARGETS.append("down_proj")


def build_lora_adapter(base: Path, dest: Path, seed: int, rank: int = 8) -> Path:
    """A random LoRA adapter of ``base`` (PEFT's format) in ``dest``, built
    once. PEFT starts B at zero (the adapter would change nothing): here
    every LoRA weight is drawn from the seed, at a scale that changes the
    greedy tokens."""
    if dest.exists():
        return dest
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, lora_dropout=0.0
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        peft_model.save_pretrained(tmp)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def hf_greedy(
    model_dir: Path, prompt: str, max_tokens: int, adapter: Path | None = None
) -> list[int]:
    """Token ids that HF transformers generates greedily after ``prompt``
    (with the PEFT LoRA ``adapter`` applied, if given).

    Same semantics as vLLM's ``SamplingParams(temperature=0,
    max_tokens=max_tokens, ignore_eos=True)``: exactly ``max_tokens`` new ids.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    inputs = tokenizer(prompt, return_tensors="pt")
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None  # ignore_eos
    config.do_sample = False
    config.max_new_tokens = config.min_new_tokens = max_tokens
    output = model.generate(**inputs, generation_config=config)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def build_classifier(source: Path, dest: Path, seed: int = SEED) -> Path:
    """A one-label sequence classifier (a cross-encoder reranker's shape:
    vLLM's ``/classify``, and its scoring API for a classifier, which needs
    ``num_labels == 1``) built from the tiny causal LM at ``source``: its
    body, and a score head drawn from ``seed``. Built into ``dest`` once."""
    if dest.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".classifier-", dir=dest.parent))
    try:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32
        )
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
