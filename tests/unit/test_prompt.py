"""experts/prompt.py: OpenAI messages as chat templates read them, and the prompt's token ids,
with a tokenizer stand-in that renders real Jinja templates (the built-in plain template and a
ChatML-like one) and counts words as tokens."""

from __future__ import annotations

import jinja2
import pytest

from experts.errors import InvalidRequestError
from experts.models import PLAIN_CHAT_TEMPLATE
from experts.prompt import prompt_ids, template_messages

CALL = {"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
TOOL_TURN = [
    {"role": "developer", "content": "Use the tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]
CHATML_WITH_CALLS = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}[call {{ c['function']['name'] }} "
    "{{ c['function']['arguments']['city'] }}]{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
STRICT_ORDER = (
    "{% for m in messages %}{% if loop.index0 % 2 == 1 and m['role'] == 'user' %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{{ m['content'] }}\n{% endfor %}"
)


class WordTokenizer:
    """What `prompt_ids` uses of a Hugging Face tokenizer: the template, rendering and encoding."""

    def __init__(self, chat_template: str) -> None:
        self.chat_template = chat_template
        self.rendered = ""

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=False,
                            tokenize=False, continue_final_message=False):  # fmt: skip
        def raise_exception(message):
            raise jinja2.TemplateError(message)

        env = jinja2.Environment()
        env.globals["raise_exception"] = raise_exception
        self.rendered = env.from_string(self.chat_template).render(
            messages=messages, tools=tools, bos_token="<bos>",
            add_generation_prompt=add_generation_prompt,
        )  # fmt: skip
        if continue_final_message:  # as transformers does: cut after the last message's text
            assert not add_generation_prompt, "transformers refuses both"
            final = messages[-1]["content"]
            self.rendered = self.rendered[:self.rendered.rindex(final) + len(final)]
        return self.rendered

    def encode(self, text, add_special_tokens=True):
        return list(range(len(text.split())))


def test_call_arguments_become_mappings_and_the_request_is_not_changed():
    calls = [CALL, {"id": "d", "type": "function", "function": {"name": "g", "arguments": "x"}}]
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": calls}]  # fmt: skip
    out = template_messages(messages)

    assert out[0] is messages[0]
    assert out[1]["content"] == ""  # templates concatenate content; null broke SmolLM2's
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert out[1]["tool_calls"][1]["function"]["arguments"] == "x"  # not JSON: kept as sent
    assert CALL["function"]["arguments"] == '{"city": "Paris"}' and messages[1]["content"] is None


def test_developer_is_the_system_role():
    assert template_messages(TOOL_TURN)[0] == {"role": "system", "content": "Use the tools."}


def test_a_template_without_tool_calls_sees_them_as_hermes_text():
    tok = WordTokenizer(PLAIN_CHAT_TEMPLATE)  # the built-in base model's template
    prompt_ids(tok, TOOL_TURN, None, "expert 'g'")

    assert tok.rendered == (
        "<bos>Use the tools.\n\nUser: Weather in Paris?\n"
        'Assistant: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>\nTool result: sunny\nAssistant:"
    )  # fmt: skip


def test_a_template_with_tool_calls_gets_them_as_calls():
    tok = WordTokenizer(CHATML_WITH_CALLS)
    ids = prompt_ids(tok, TOOL_TURN, None, "expert 's'")

    assert "<|assistant|>[call get_weather Paris]" in tok.rendered
    assert "<tool_call>" not in tok.rendered
    assert ids == list(range(len(tok.rendered.split())))


def test_a_template_that_refuses_the_messages_is_a_400_naming_the_expert():
    tok = WordTokenizer(STRICT_ORDER)
    with pytest.raises(InvalidRequestError) as err:
        prompt_ids(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                   None, "expert 'strict'")  # fmt: skip
    assert err.value.status == 400 and err.value.param == "messages"
    assert "expert 'strict''s chat template cannot render" in err.value.message
    assert "roles must alternate" in err.value.message


def test_continue_final_ends_the_prompt_inside_the_assistant_message():
    ask = [{"role": "user", "content": "Capital of France?"},
           {"role": "assistant", "content": "The capital is"}]  # fmt: skip
    tok = WordTokenizer(PLAIN_CHAT_TEMPLATE)
    prompt_ids(tok, ask, None, "expert 'g'")
    assert tok.rendered.endswith("Assistant: The capital is\nAssistant:")  # a new turn after it
    ids = prompt_ids(tok, ask, None, "expert 'g'", continue_final=True)
    assert tok.rendered.endswith("User: Capital of France?\nAssistant: The capital is")
    assert ids == list(range(len(tok.rendered.split())))
