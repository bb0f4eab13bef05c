"""What a WebUI prompt says, without its markup: the text a prompt-conditioned scorer compares an image with.

A1111 (and Forge, reForge, SD.Next) take ``(word:1.2)``, ``(word)``, ``[word]`` as attention weights,
``\\(`` as a literal bracket, ``<lora:name:0.8>`` as an extra network and ``BREAK`` as a chunk boundary;
none of it is text the image depicts, and a CLIP tokenizer given it literally spends tokens of its 77
on brackets and numbers. The rules are A1111's own (``modules/prompt_parser.parse_prompt_attention`` and
``modules/extra_networks.re_extra_net``). Prompt editing (``[from:to:when]``, ``[to:when]``,
``[from::when]``) is read as at the last step, when the picture is finished, where not nested;
alternation (``[a|b]``) is left as written.
"""

from __future__ import annotations

import re

# A1111's tokens, in its order: escapes, opening brackets, a weight closing a bracket, closing brackets,
# plain text, a lone colon
_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
# [from:to:when], [to:when] and [from::when], not nested: group 2 is the text of the last step, if any
_EDITING = re.compile(r"\[(?:([^\[\]():|]*):)?([^\[\]():|]*):\s*[+-]?[.\d]+\s*\]")


def plain_prompt(prompt: str) -> str:
    """``prompt`` without attention weights, brackets, extra networks and BREAK, its escapes resolved."""
    text = _EDITING.sub(lambda m: m.group(2), _BREAK.sub(", ", _EXTRA_NETWORK.sub("", prompt)))
    parts: list[str] = []
    for match in _ATTENTION.finditer(text):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            parts.append(token[1])
        elif token not in ("(", "[", ")", "]", "\\") and match.group(1) is None:
            parts.append(token)
    plain = re.sub(r"\s+", " ", "".join(parts))
    plain = re.sub(r"\s+([,.;])", r"\1", plain)  # the space a removed tag left before a comma
    plain = re.sub(r"(,\s*)+,", ",", plain)  # a list item that was only markup
    return plain.strip(" ,")
