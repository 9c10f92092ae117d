"""Chat rendering that never re-tokenises what a model sampled.

The most common bug in multi-turn RL code is *retokenization drift*: the trainer re-renders the chat
and tokenises it differently from what the model actually sampled, so the loss is computed on tokens the
policy never produced. This module avoids it by working on token ids incrementally:

* :meth:`ChatRenderer.prompt_ids` renders the first prompt (system + first observation) with the
  generation prompt (e.g. ``<|im_start|>assistant\\n``).
* The policy samples action ids; they are appended to the context **as sampled**.
* :meth:`ChatRenderer.continuation_ids` renders only the *delta*: the rest of the assistant message after
  the sampled stop token (the template's tail, e.g. the ``"\\n"`` after ``<|im_end|>``), the new
  observation message(s) and the next generation prompt. ``context + sampled + continuation`` is the next
  context, so every context is a strict prefix of the next one and the ids trained on are byte-for-byte
  the ids sampled.

That only works when the chat template is *prefix-preserving*: rendering a conversation and then the
same conversation with more messages must produce a string that starts with the first rendering
(templates that drop earlier reasoning, or re-wrap earlier turns, are not). :class:`ChatRenderer` checks
this on a probe conversation when it is built and on every real call, and raises
:class:`TemplateNotPrefixPreserving` with the offending text otherwise.

Each chunk is tokenised on its own (``encode(text, add_special_tokens=False)``). The context is therefore
always exactly what the model saw; with byte-level BPE tokenizers (SmolLM, Llama 3, Qwen, GPT-2) whose chat
templates put special tokens at message boundaries it also equals the tokenisation of a full render.

The module is core: it imports neither torch nor transformers. The tokenizer is duck-typed: anything
with ``apply_chat_template(messages, tokenize=False, add_generation_prompt=..., [tools=...])``,
``encode(text, add_special_tokens=False)`` and ``decode(ids, skip_special_tokens=...)`` works (a
Hugging Face tokenizer does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChatRenderer",
    "TemplateNotPrefixPreserving",
    "TokenizedEpisode",
    "episode_to_messages",
    "tokenize_episode",
]

# Probe contents; unlikely strings so they can be located in a rendering.
_SENT_SYS = "\u2063hero-probe-system\u2063"
_SENT_USER = "\u2063hero-probe-user\u2063"
_SENT_ASSIST = "\u2063hero-probe-assistant\u2063"
_SENT_TOOL = "\u2063hero-probe-tool\u2063"


class TemplateNotPrefixPreserving(ValueError):
    """The chat template re-renders earlier messages when later ones are added (or alters the assistant
    message around the sampled tokens), so contexts cannot be built by appending rendered deltas to sampled
    ids. Use a prefix-preserving template (e.g. pass a simpler ``chat_template`` to the tokenizer) or train
    per turn."""


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    if hasattr(message, "to_chat"):
        return message.to_chat()
    if hasattr(message, "model_dump"):
        return {k: v for k, v in message.model_dump().items() if v is not None}
    raise TypeError(f"not a chat message: {message!r}")


def _first_diff(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _not_prefix(what: str, shorter: str, longer: str) -> TemplateNotPrefixPreserving:
    i = _first_diff(shorter, longer)
    lo = max(0, i - 60)
    return TemplateNotPrefixPreserving(
        f"The chat template is not prefix-preserving: {what}. The renderings diverge at character {i}:\n"
        f"  before: ...{shorter[lo:i + 60]!r}\n  after:  ...{longer[lo:i + 60]!r}\n"
        "hero-gym builds each turn's context by appending the rendered delta of the new messages to the "
        "sampled token ids, which needs a template whose rendering of a conversation is a prefix of the "
        "rendering of any continuation of it. Set a prefix-preserving tokenizer.chat_template (e.g. a "
        "ChatML one) or train on per-turn samples."
    )


class ChatRenderer:
    """Token-level chat rendering for incremental, token-exact multi-turn contexts.

    Args:
        tokenizer: a Hugging Face tokenizer (or anything with the same ``apply_chat_template`` /
            ``encode`` / ``decode`` methods) with a chat template.
        tools: OpenAI-style tool schemas. Passed to the template when it supports tools
            (:attr:`supports_tools`); otherwise ignored here (describe them in the system message).
        check: verify prefix preservation on a probe conversation now (recommended).

    Attributes:
        supports_tools: the template references ``tools``.
        tool_role: ``"tool"`` when the template renders tool messages, else ``"user"`` (tool observations
            are then rendered as user messages).
        generation_prompt_ids: ids the template appends for ``add_generation_prompt=True``
            (``<|im_start|>assistant\\n`` for ChatML).
        end_of_turn_id: the special token closing an assistant message (``<|im_end|>`` for ChatML), or
            ``None``; a policy should stop on it.
        assistant_suffix: the text the template puts after an assistant message's content
            (``"<|im_end|>\\n"`` for ChatML).
    """

    def __init__(self, tokenizer: Any, tools: list[dict] | None = None, *, check: bool = True):
        self.tokenizer = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, Mapping):
            template = template.get("tool_use" if tools else "default") or next(iter(template.values()), None)
        if not template:
            raise ValueError("The tokenizer has no chat_template; set tokenizer.chat_template first.")
        self.template: str = str(template)
        self.supports_tools = "tools" in self.template
        self.tools = list(tools) if tools else None
        self.tool_role = "tool"
        try:
            probe = self._render([{"role": "user", "content": _SENT_USER},
                                  {"role": "assistant", "content": _SENT_ASSIST},
                                  {"role": "tool", "content": _SENT_TOOL}], False)
            if _SENT_TOOL not in probe:  # the template silently drops tool messages
                self.tool_role = "user"
        except Exception:  # e.g. "Conversation roles must alternate", or an unknown role
            self.tool_role = "user"
        self._probe = [
            {"role": "system", "content": _SENT_SYS},
            {"role": "user", "content": _SENT_USER},
            {"role": "assistant", "content": _SENT_ASSIST},
            {"role": "tool", "content": _SENT_TOOL},
        ]
        self._compute_layout()
        if check:
            self.verify()

    # ------------------------------------------------------------------ rendering primitives
    def _normalise(self, messages: Sequence[Any]) -> list[dict[str, Any]]:
        out = [_as_dict(m) for m in messages]
        if self.tool_role != "tool":
            out = [{**m, "role": self.tool_role} if m.get("role") == "tool" else m for m in out]
        return out

    def _render(self, messages: Sequence[Any], add_generation_prompt: bool) -> str:
        kwargs: dict[str, Any] = {}
        if self.supports_tools and self.tools:
            kwargs["tools"] = self.tools
        text = self.tokenizer.apply_chat_template(
            self._normalise(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
        if not isinstance(text, str):  # some versions return a list for batched input
            text = text[0]
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered chunk, with no BOS/EOS added (the template writes its own)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return list(ids)

    def render(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
        """The template's text for ``messages`` (tools passed when supported)."""
        return self._render(messages, add_generation_prompt)

    def _compute_layout(self) -> None:
        convo = self._probe[:2]
        without = self._render(convo, False)
        with_gen = self._render(convo, True)
        if not with_gen.startswith(without):
            raise _not_prefix("adding the generation prompt re-renders the conversation", without, with_gen)
        self.generation_prompt: str = with_gen[len(without):]
        self.generation_prompt_ids: list[int] = self.encode(self.generation_prompt)
        full = self._render(self._probe[:3], False)
        pos = full.rfind(_SENT_ASSIST)
        if pos < 0:
            raise TemplateNotPrefixPreserving("The chat template drops the content of the last assistant message.")
        self.assistant_suffix: str = full[pos + len(_SENT_ASSIST):]
        suffix_ids = self.encode(self.assistant_suffix)
        self.end_of_turn_id: int | None = None
        self.end_of_turn_text: str = ""
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        added = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
        if suffix_ids and (suffix_ids[0] in special or suffix_ids[0] in added):
            self.end_of_turn_id = int(suffix_ids[0])
            self.end_of_turn_text = self.tokenizer.decode([suffix_ids[0]], skip_special_tokens=False)
            if not self.assistant_suffix.startswith(self.end_of_turn_text):
                self.end_of_turn_text = ""

    def verify(self) -> None:
        """Check prefix preservation on a probe conversation (system, user, assistant, tool, assistant, user,
        assistant). Raises :class:`TemplateNotPrefixPreserving` on the first violation."""
        probe = [
            *self._probe,
            {"role": "assistant", "content": _SENT_ASSIST + "2"},
            {"role": "user", "content": _SENT_USER + "2"},
            {"role": "assistant", "content": _SENT_ASSIST + "3"},
        ]
        prev = self._render(probe[:1], False)
        for k in range(2, len(probe) + 1):
            cur = self._render(probe[:k], False)
            if not cur.startswith(prev):
                raise _not_prefix(f"adding a {probe[k - 1]['role']!r} message (message {k}) changes the rendering "
                                  "of the earlier messages", prev, cur)
            if probe[k - 1]["role"] == "assistant":
                head = self._render(probe[:k - 1], True)
                if not cur.startswith(head):
                    raise _not_prefix(f"the assistant message {k} does not start with the generation prompt",
                                      head, cur)
                content = probe[k - 1]["content"]
                rest = cur[len(head):]
                if not rest.startswith(content):
                    raise TemplateNotPrefixPreserving(
                        "The chat template alters the assistant content right after the generation prompt "
                        f"(expected {content!r} at the start of {rest[:120]!r}), so sampled tokens would not "
                        "match the rendering. Use a template that renders assistant content verbatim.")
            prev = cur

    # ------------------------------------------------------------------ public API
    def prompt_ids(self, messages: Sequence[Any]) -> list[int]:
        """Ids of the full rendering of ``messages`` followed by the generation prompt. Use it for the first
        context of an episode (before anything was sampled)."""
        return self.encode(self._render(messages, True))

    def continuation_ids(
        self,
        prev_messages: Sequence[Any],
        new_messages: Sequence[Any],
        *,
        sampled_ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Ids to append after a context that ends with the sampled action of ``prev_messages[-1]``.

        ``prev_messages`` must end with the assistant message whose content is the decoded sampled action
        (without the stop token); the context it corresponds to is ``prompt_ids(prev_messages[:-1]) +
        sampled_ids`` (or any earlier context chain built this way). The result is

            (rest of the assistant message after what was sampled) + render(new_messages) + generation prompt

        e.g. for ChatML and a sampled ``...<|im_end|>``: ``"\\n<|im_start|>tool\\n{obs}<|im_end|>\\n
        <|im_start|>assistant\\n"``. If the sampled ids did not end with the template's end-of-turn token
        (the generation was cut at ``max_new_tokens``) the closing ``<|im_end|>`` is included.

        Args:
            sampled_ids: the sampled ids of the last assistant message. Used only to see whether the
                end-of-turn token was sampled; when ``None`` it is assumed that it was (the normal case).

        Raises :class:`TemplateNotPrefixPreserving` if the template re-renders earlier messages.
        """
        prev = self._normalise(prev_messages)
        new = self._normalise(new_messages)
        if not prev or prev[-1].get("role") != "assistant":
            raise ValueError("continuation_ids: prev_messages must end with the sampled assistant message")
        head = self._render(prev[:-1], True)
        full_prev = self._render(prev, False)
        if not full_prev.startswith(head):
            raise _not_prefix("the assistant message does not start with the generation prompt", head, full_prev)
        content = str(prev[-1].get("content") or "")
        rest = full_prev[len(head):]
        if rest.startswith(content):
            suffix = rest[len(content):]
        elif full_prev.endswith(self.assistant_suffix):
            suffix = self.assistant_suffix
        else:
            raise TemplateNotPrefixPreserving(
                "The chat template alters the assistant content, so the tail after the sampled tokens cannot be "
                f"located (rendered {rest[:120]!r} for content {content[:120]!r}).")
        stop_text = self.end_of_turn_text
        if sampled_ids is not None:
            stop_text = ""
            if len(sampled_ids) > 0:
                last = self.tokenizer.decode([int(sampled_ids[-1])], skip_special_tokens=False)
                if last and suffix.startswith(last) and (
                    int(sampled_ids[-1]) == self.end_of_turn_id or last == self.end_of_turn_text
                ):
                    stop_text = last
        tail = suffix[len(stop_text):] if stop_text and suffix.startswith(stop_text) else suffix
        full = self._render(prev + new, True)
        if not full.startswith(full_prev):
            raise _not_prefix("adding the new messages changes the rendering of the earlier ones", full_prev, full)
        return self.encode(tail + full[len(full_prev):])

    def message_ids(self, message: Any) -> list[int]:
        """Ids of one message as the template renders it after an observation (no generation prompt)."""
        base = self._render(self._probe, False)
        full = self._render([*self._probe, _as_dict(message)], False)
        if not full.startswith(base):
            raise _not_prefix("adding a message changes the rendering of the earlier ones", base, full)
        delta = full[len(base):]
        content = str(_as_dict(message).get("content") or "")
        if content and content not in delta:
            raise ValueError(f"The chat template does not render a {_as_dict(message).get('role')!r} message "
                             "after an observation (its content is missing); use another role.")
        return self.encode(delta)

    def note_block_ids(self, note_text: str, role: str = "user") -> list[int]:
        """``message_ids({"role": role, "content": note_text}) + generation_prompt_ids``: what
        :meth:`note_ids` puts after the context's prefix (useful for packed teacher scoring)."""
        return self.message_ids({"role": role, "content": note_text}) + list(self.generation_prompt_ids)

    def note_ids(self, context_ids: Sequence[int], note_text: str, role: str = "user") -> list[int]:
        """The teacher context for a turn: the student's context with a privileged note inserted before the
        action.

        Layout (``G`` = :attr:`generation_prompt_ids`, ``context_ids = P + G``)::

            P + render({"role": role, "content": note_text}) + G

        i.e. the trailing generation prompt is removed, the note is rendered as one complete message of
        ``role`` (ChatML: ``<|im_start|>user\\n{note}<|im_end|>\\n``) and the generation prompt follows, so the
        student's sampled action tokens can be appended unchanged and scored by the teacher.
        Raises ``ValueError`` if ``context_ids`` does not end with the generation prompt.
        """
        g = list(self.generation_prompt_ids)
        ctx = list(context_ids)
        if len(ctx) < len(g) or ctx[len(ctx) - len(g):] != g:
            raise ValueError("note_ids: context_ids must end with the generation prompt ids "
                             f"{g} (got ...{ctx[-len(g) - 4:]})")
        return ctx[: len(ctx) - len(g)] + self.note_block_ids(note_text, role)


# ---------------------------------------------------------------------- episodes


def episode_to_messages(episode: Any, *, upto: int | None = None) -> list[dict[str, Any]]:
    """The chat of an episode as plain dicts: system, the first observation (user), then per turn the
    assistant's raw reply and the observation in its role (``tool`` or ``user``).

    The system message is the one the model actually saw when the rollout recorded it
    (``episode.metadata["system_message"]``, which may include tool descriptions), else
    ``episode.system_prompt``. ``upto=t`` stops before turn ``t``'s action, so the result is the history
    the agent had when choosing action ``t``.
    """
    msgs: list[dict[str, Any]] = []
    meta = getattr(episode, "metadata", None) or {}
    system = meta.get("system_message", episode.system_prompt)
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": episode.initial_observation})
    for turn in episode.turns[:upto]:
        msgs.append({"role": "assistant", "content": turn.action_text})
        msgs.append({"role": turn.observation_role, "content": turn.observation})
    return msgs


@dataclass
class TokenizedEpisode:
    """An episode as one token sequence for training.

    Attributes:
        input_ids: the last turn's context followed by its sampled action: every turn's context is a prefix.
        action_mask: 1 on sampled action tokens (the only tokens a loss may use), 0 on prompt, observation,
            tool and template tokens.
        turn_spans: ``(start, end)`` of turn ``t``'s action in ``input_ids``; ``input_ids[:start]`` is
            exactly the context the model saw before sampling turn ``t``.
        logprobs: the sampling log-probs aligned with ``input_ids`` (0.0 outside actions), when recorded.
    """

    input_ids: list[int]
    action_mask: list[int]
    turn_spans: list[tuple[int, int]]
    logprobs: list[float] | None = field(default=None)


def tokenize_episode(episode: Any, tokenizer: Any, *, renderer: ChatRenderer | None = None) -> TokenizedEpisode:
    """Token ids + action mask of an episode, reusing the recorded sampled ids (never re-tokenising them).

    When every turn records ``context_token_ids`` and ``action_token_ids`` (rollouts by a model), the result
    is assembled from those ids only, and it is checked that each turn's ``context + action`` is a prefix of
    the next turn's context; a violation raises :class:`TemplateNotPrefixPreserving`.

    When no turn records ids (a scripted or human agent produced the episode: nothing was sampled), the
    episode is rendered with the chat template incrementally: each action text is tokenised and closed with
    the end-of-turn token. A mix of both raises ``ValueError``.
    """
    turns = list(episode.turns)
    have = [t.context_token_ids is not None and t.action_token_ids is not None for t in turns]
    if turns and all(have):
        spans: list[tuple[int, int]] = []
        for i, t in enumerate(turns):
            ctx, act = list(t.context_token_ids), list(t.action_token_ids)
            if i + 1 < len(turns):
                nxt = turns[i + 1].context_token_ids
                if list(nxt[: len(ctx) + len(act)]) != ctx + act:
                    raise TemplateNotPrefixPreserving(
                        f"Episode {getattr(episode, 'episode_id', '?')}: turn {i}'s context + sampled action is not a "
                        f"prefix of turn {i + 1}'s context; the contexts were not built incrementally. Train per turn.")
            spans.append((len(ctx), len(ctx) + len(act)))
        last = turns[-1]
        input_ids = list(last.context_token_ids) + list(last.action_token_ids)
        mask = [0] * len(input_ids)
        logprobs: list[float] | None = [0.0] * len(input_ids)
        for t, (s, e) in zip(turns, spans):
            mask[s:e] = [1] * (e - s)
            if logprobs is not None:
                if t.action_logprobs is None or len(t.action_logprobs) != e - s:
                    logprobs = None
                else:
                    logprobs[s:e] = [float(x) for x in t.action_logprobs]
        return TokenizedEpisode(input_ids, mask, spans, logprobs)
    if any(have):
        raise ValueError("tokenize_episode: some turns record token ids and some do not")

    r = renderer or ChatRenderer(tokenizer, getattr(episode, "tools", None) or None)
    msgs = episode_to_messages(episode)
    n_head = len(msgs) - 2 * len(turns)
    ids = r.prompt_ids(msgs[:n_head])
    mask = [0] * len(ids)
    spans = []
    for i, t in enumerate(turns):
        act = r.encode(t.action_text)
        if r.end_of_turn_id is not None:
            act = act + [r.end_of_turn_id]
        spans.append((len(ids), len(ids) + len(act)))
        ids = ids + act
        mask += [1] * len(act)
        if i + 1 < len(turns):
            upto = n_head + 2 * i + 1  # history up to and including this assistant message
            cont = r.continuation_ids(msgs[:upto], msgs[upto:upto + 1],
                                      sampled_ids=act if r.end_of_turn_id is not None else [])
            ids += cont
            mask += [0] * len(cont)
    return TokenizedEpisode(ids, mask, spans, None)
