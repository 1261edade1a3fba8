"""The prompt: memory lines, the recalled block's token budget, and chat templates
split into a head (what a KV cache holds) and a tail. No model is loaded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memos_cli.activation import prompt
from memos_cli.errors import ModelError
from memos_cli.models.generator import PromptFormat
from memos_cli.plaintext.units import MemoryUnit

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}[assistant]"
)


def unit(text: str, uid: str = "01m7yq0hz716rh", day: int = 8) -> MemoryUnit:
    return MemoryUnit(id=uid, text=text, time=datetime(2024, 5, day, tzinfo=UTC))


def words(text: str) -> int:
    return len(text.split())


def test_memory_line_is_one_dated_line() -> None:
    assert prompt.memory_line(unit("Alice\nmoved   to Lisbon")) == "- [2024-05-08] Alice moved to Lisbon"


def test_head_text_holds_the_units_in_order() -> None:
    head = prompt.head_text([unit("first", day=1), unit("second", day=2)])
    assert head.startswith(prompt.INSTRUCTIONS) and head.index("first") < head.index("second")
    assert prompt.head_text([]) == prompt.INSTRUCTIONS


def test_recalled_block_keeps_within_its_budget_and_skips_what_does_not_fit() -> None:
    units = [unit("a b c d e f g h i j k l", "01m7yq0hz716r1"), unit("short one", "01m7yq0hz716r2"),
             unit("another short", "01m7yq0hz716r3")]
    text, used = prompt.recalled_block(units, budget=16, count=words)
    assert [u.id for u in used] == ["01m7yq0hz716r2", "01m7yq0hz716r3"]  # the long one did not fit
    assert sum(words(line) + 1 for line in text.splitlines()[1:]) + words(prompt.RECALLED_TITLE) + 1 <= 16
    assert prompt.recalled_block(units, budget=0, count=words) == ("", [])


def test_plain_format_head_does_not_depend_on_the_turn() -> None:
    fmt = PromptFormat(None, "<bos>", "<eos>")
    head1, tail1 = fmt.render("HEAD", "mem one", [], "q1?")
    head2, tail2 = fmt.render("HEAD", "mem two", [("q1?", "a1")], "q2?")
    assert head1 == head2 == "HEAD"
    assert tail2.endswith("User: q1?\nAssistant: a1\n\nUser: q2?\nAssistant:") and "mem two" in tail2
    assert "\nUser:" in fmt.stop


@pytest.mark.parametrize("template", [GEMMA_TEMPLATE, NO_SYSTEM_TEMPLATE])
def test_a_chat_template_is_split_after_the_head(template: str) -> None:
    fmt = PromptFormat(template, "<bos>", "<eos>")
    head1, tail1 = fmt.render("HEAD BLOCK", "recalled", [], "q1?")
    head2, tail2 = fmt.render("HEAD BLOCK", "other memories", [("q1?", "a1")], "q2?")
    assert head1 == head2 and head1.endswith("HEAD BLOCK")
    whole = head2 + tail2
    assert whole.index("HEAD BLOCK") < whole.index("other memories") < whole.index("q1?") < whole.index("a1") < whole.index("q2?")
    assert fmt.starts_with_bos(head1) == ("bos_token" in template)


def test_a_template_that_cannot_hold_the_head_is_refused() -> None:
    fmt = PromptFormat("{{ raise_exception('no') }}", "<bos>", "<eos>")
    with pytest.raises(ModelError, match="chat template"):
        fmt.render("HEAD", "", [], "q?")
