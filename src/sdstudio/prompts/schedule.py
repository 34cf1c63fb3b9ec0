"""A1111 prompt editing ``[from:to:when]`` and alternation ``[a|b]`` (``modules/prompt_parser.py``).

A prompt becomes a schedule: a list of ``(end_at_step, text)``; step ``s`` (0-based) uses the first
entry with ``s <= end_at_step``. ``when`` with a decimal point is a fraction of the steps, otherwise
a step number; ``[to:when]`` adds text after ``when``, ``[from::when]`` removes it; ``[a|b|c]``
cycles every step. Emphasis brackets pass through unchanged (parsed later by ``attention``).

>>> prompt_schedule("a [dog:cat:0.5] on a mat", 10)
[(5, 'a dog on a mat'), (10, 'a cat on a mat')]
>>> prompt_schedule("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]", 100)
[(25, 'fantasy landscape with a mountain and an oak in foreground shoddy'), (50, 'fantasy landscape with a lake and an oak in foreground in background shoddy'), (60, 'fantasy landscape with a lake and an oak in foreground in background masterful'), (75, 'fantasy landscape with a lake and an oak in background masterful'), (100, 'fantasy landscape with a lake and a christmas tree in background masterful')]
>>> prompt_schedule("[a|b] c", 3)
[(1, 'a c'), (2, 'b c'), (3, 'a c')]
>>> prompt_schedule("a [b:3]", 5)
[(3, 'a '), (5, 'a b')]
>>> prompt_schedule("((a)) [b] (c:1.2)", 4)
[(4, '((a)) [b] (c:1.2)')]
>>> prompt_schedule("unbalanced [a:b", 4)
[(4, 'unbalanced [a:b')]
"""

from __future__ import annotations

import re
from functools import lru_cache

import lark

from sdstudio.errors import SDStudioError

RE_AND = re.compile(r"\bAND\b")
RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111 composable prompts (``get_multicond_prompt_list``): sub-prompts split at ``AND``, each
    with an optional trailing ``:weight`` (default 1).

    >>> split_and("a cat AND a hat :0.5")
    [('a cat', 1.0), (' a hat', 0.5)]
    >>> split_and("plain (emphasis:1.2)")
    [('plain (emphasis:1.2)', 1.0)]
    """
    parts = []
    for sub in RE_AND.split(prompt):
        match = RE_WEIGHT.search(sub)
        text, weight = match.groups() if match is not None else (sub, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR)


def _switch_steps(tree: lark.Tree, steps: int) -> list[int]:
    """Every step at which the text changes (plus ``steps``); rewrites each NUMBER to a step."""
    found = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            raw = str(node.children[-2])
            value = float(raw) * steps if "." in raw else float(raw)
            node.children[-2] = min(steps, int(value))
            if node.children[-2] >= 1:
                found.add(node.children[-2])
        elif node.data == "alternate":
            found.update(range(1, steps + 1))
    return sorted(found)


def _text_at(tree, step: int) -> str:
    """The prompt text in force at ``step`` (1-based end step of a schedule entry)."""
    if isinstance(tree, lark.Token):
        return str(tree)
    if tree is None:
        return ""
    if tree.data == "scheduled":
        before, after, when = tree.children[0], tree.children[1], tree.children[-2]
        return _text_at(before, step) if step <= when else _text_at(after, step)
    if tree.data == "alternate":
        options = tree.children
        return _text_at(options[(step - 1) % len(options)], step)
    return "".join(_text_at(child, step) for child in tree.children)


MAX_NESTING = 20  # brackets inside brackets; A1111 prompts rarely go past 4
MAX_UNBALANCED_CHARS = 400  # longer prompts with unmatched brackets get no editing schedule


def bracket_depth(prompt: str) -> int:
    """Deepest nesting of ``(`` / ``[`` in ``prompt`` (escaped brackets ``\\(`` do not count)."""
    depth = deepest = 0
    escaped = False
    for ch in prompt:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]":
            depth = max(0, depth - 1)
    return deepest


MAX_AND_PARTS = 16  # composable-prompt parts: each is one more UNet batch item at every step
MAX_AND_WEIGHT = 100.0


def check_and_parts(prompt: str, field: str = "prompt") -> None:
    """Raise :class:`SDStudioError` for more than :data:`MAX_AND_PARTS` ``AND`` parts, or a part weight
    that is not a finite number within +-:data:`MAX_AND_WEIGHT` (A1111 sets no limit; 400 parts are
    one 400-image UNet batch)."""
    count = len(RE_AND.findall(prompt)) + 1
    if count > MAX_AND_PARTS:
        raise SDStudioError(f"{field}: {count} AND parts; at most {MAX_AND_PARTS} are allowed", field=field)
    if count > 1:
        for text, weight in split_and(prompt):
            if not abs(weight) <= MAX_AND_WEIGHT:
                raise SDStudioError(
                    f"{field}: AND part {text.strip()[:40]!r} has weight {weight}; "
                    f"weights must be within +-{MAX_AND_WEIGHT:g}",
                    field=field,
                )


def check_prompt_nesting(prompt: str, field: str = "prompt") -> None:
    """Raise :class:`SDStudioError` when brackets nest deeper than :data:`MAX_NESTING`: the grammar
    is recursive, so a prompt like ``"[a:" * 300`` would otherwise end in a RecursionError."""
    depth = bracket_depth(prompt)
    if depth > MAX_NESTING:
        raise SDStudioError(
            f"{field}: brackets are nested {depth} deep; at most {MAX_NESTING} levels of ( ) and [ ] are allowed",
            field=field,
        )


def _top_level_pieces(prompt: str) -> list[str] | None:
    """``prompt`` cut into plain runs and balanced top-level bracket groups; None when a bracket
    has no partner (the grammar then reads stray brackets in ways that depend on the whole prompt),
    a ``|`` stands outside every group, or a backslash ends the prompt."""
    pieces, run, i = [], 0, 0
    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\":
            if i == len(prompt) - 1:
                return None
            i += 2
            continue
        if ch in "([":
            close = _matching_close(prompt, i)
            if close < 0:
                return None
            if i > run:
                pieces.append(prompt[run:i])
            pieces.append(prompt[i : close + 1])
            i = run = close + 1
            continue
        if ch in ")]|":
            return None
        i += 1
    if run < len(prompt):
        pieces.append(prompt[run:])
    return pieces


def _matching_close(prompt: str, start: int) -> int:
    """Index of the bracket closing the one at ``start``, or -1 (mismatched or never closed)."""
    stack, i = [], start
    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "([":
            stack.append(")" if ch == "(" else "]")
        elif ch in ")]":
            if stack.pop() != ch:
                return -1
            if not stack:
                return i
        i += 1
    return -1


def _parse(text: str) -> lark.Tree | str:
    """The grammar's tree for ``text``; text without ``[`` (or ``|``, which fails) stays a string."""
    return _parser().parse(text) if "[" in text or "|" in text else text


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """``[(end_at_step, text), ...]`` for ``prompt`` over ``steps`` sampling steps (A1111 semantics).

    A prompt the grammar cannot parse is used as it is for every step. Brackets nested deeper than
    :data:`MAX_NESTING` raise :class:`SDStudioError`. The Earley parser's time grows steeply with
    length (a 2,000-character prompt of bracket groups took 141 s), so a prompt whose brackets all
    pair up is parsed one top-level group at a time (same schedules, tested against whole-prompt
    parses); one with unmatched brackets is parsed whole up to :data:`MAX_UNBALANCED_CHARS`
    characters and used as written beyond that.
    """
    check_prompt_nesting(prompt)
    if "[" not in prompt:
        return [(steps, prompt)]
    pieces = _top_level_pieces(prompt)
    if pieces is None and len(prompt) > MAX_UNBALANCED_CHARS:
        return [(steps, prompt)]
    try:
        trees = [_parse(piece) for piece in pieces] if pieces is not None else [_parser().parse(prompt)]
    except lark.exceptions.LarkError:
        return [(steps, prompt)]
    ends = sorted(set().union(*(_switch_steps(t, steps) for t in trees if isinstance(t, lark.Tree))))
    return [
        (end, "".join(_text_at(t, end) if isinstance(t, lark.Tree) else t for t in trees)) for end in ends
    ]


def text_for_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of the first entry whose end step is >= ``step`` (0-based sampler step, as A1111)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]
