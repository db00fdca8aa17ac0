"""Hugging Face reference for the chat-template tests: renders requests with transformers.

Shared by make_cases.py (committed cases) and live_check.py (the live CI check). A request is the
JSON that `tessera chat-template --request-file` reads:
  {"messages": [...], "tools": [...] | null, "enable_thinking": bool, "add_generation_prompt": bool,
   "documents": [...], "chat_template_kwargs": {...}}
"""

import copy
import json
import os

from transformers.utils.chat_template_utils import _compile_jinja_template

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


def load_tokenizer(tokenizer_dir):
    """AutoTokenizer when the directory holds vocabulary files; otherwise a vocabulary-less
    tokenizer carrying tokenizer_config.json's chat template and named special tokens, which renders
    exactly the same (rendering never touches the vocabulary)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if any(os.path.exists(os.path.join(tokenizer_dir, f)) for f in ("tokenizer.json", "vocab.json")):
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    from tokenizers import Tokenizer, models

    with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    special = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            special[name] = value
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()),
                                   chat_template=config.get("chat_template"), **special)


def render(tokenizer, request, chat_template=None):
    """Returns {"text": ...} or {"error": "<python exception message>"}."""
    kwargs = dict(request.get("chat_template_kwargs") or {})
    if "enable_thinking" in request:
        kwargs["enable_thinking"] = request["enable_thinking"]
    try:
        text = tokenizer.apply_chat_template(
            copy.deepcopy(request["messages"]),
            tools=copy.deepcopy(request.get("tools")),
            documents=copy.deepcopy(request.get("documents")),
            chat_template=chat_template,
            add_generation_prompt=request.get("add_generation_prompt", False),
            tokenize=False,
            **kwargs)
        return {"text": text}
    except Exception as e:  # the template's errors are part of what is compared
        return {"error": str(e)}


def render_jinja(source, variables):
    """A bare template in transformers' chat-template environment."""
    try:
        return {"text": _compile_jinja_template(source).render(**variables)}
    except Exception as e:
        return {"error": str(e)}
