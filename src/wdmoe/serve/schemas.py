"""The OpenAI request bodies the server accepts (a subset, validated) and the server's limits.

Unknown fields are ignored, as OpenAI-compatible servers do, so clients that send vendor extras still work. OpenAI
parameters the engine does not honour yet are declared (so the schema shows them) and listed in `NOT_HONOURED`: a
request that sets one to anything but its neutral value is refused with 400 naming it, never silently ignored.
Types are strict (no `"1"` for 1, no `false` for 0). Value bounds that depend on the model or the limits are
checked by the routes, which answer 400 naming the field; those the OpenAPI document can state (the vocabulary,
`max_tokens`, prompts per request) carry a `BOUND` marker that `wdmoe.serve.openapi` turns into the served app's
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _whole(value: Any) -> Any:
    """JSON Schema's integer includes 2.0: a whole float becomes an int before the strict check (which still
    refuses 2.5, "2" and true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WHOLE = BeforeValidator(_whole)  # after the Field constraints in Annotated, so the schema keeps "minimum" etc.
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Seed = Annotated[int, WHOLE]  # any integer: the engine reduces it modulo 2**63
BOUND = "x-wdmoe-bound"  # names a limit of the served app that the OpenAPI document fills in
TokenId = Annotated[int, Field(ge=0, json_schema_extra={BOUND: "vocabulary"}), WHOLE]
NewTokens = Annotated[int, Field(ge=0, json_schema_extra={BOUND: "max_tokens"}), WHOLE]
Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Prompt = (Text | Annotated[list[Text], Field(min_length=1, json_schema_extra={BOUND: "max_prompts"})] | TokenIds
          | Annotated[list[TokenIds], Field(min_length=1, json_schema_extra={BOUND: "max_prompts"})])
Stop = str | Annotated[list[str], Field(max_length=4)] | None
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]
BiasKey = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]  # a token id, as OpenAI's logit_bias keys it
Choices = Annotated[int, Field(ge=1, le=128), WHOLE]
# `n`: choices per prompt, each its own sampled sequence; prompts x n is bounded by the served max_prompts
ChoiceCount = Annotated[int, Field(ge=1, le=128, json_schema_extra={BOUND: "max_choices"}), WHOLE]

# OpenAI parameters the server does not honour yet, and their neutral values (the ones that change nothing, which
# clients often send explicitly): any other value is refused with 400 naming the parameter. An entry goes when the
# parameter is honoured (the engine samples `presence_penalty`, `frequency_penalty`, `logit_bias` and the `n`
# choices per request).
NOT_HONOURED: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "suffix": (None, ""),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False),  # chat only: /v1/completions honours its integer `logprobs`
    "top_logprobs": (None, 0),
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; a request beyond them answers 400."""

    max_prompt_tokens: int = 2048  # tokens in one prompt (also capped by the model's context)
    max_tokens: int = 512  # new tokens per prompt
    max_prompts: int = 32  # prompts in one /v1/completions request, and sequences (prompts x n) in any request
    max_queue: int = 64  # requests waiting for the model; beyond it 429
    max_body_bytes: int = 4 * 2**20  # a request body beyond it is refused (413) before it is read
    max_dashboard_streams: int = 16  # concurrent /dashboard/events clients; beyond it 503


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    honoured_here: ClassVar[tuple[str, ...]] = ()  # NOT_HONOURED names that this body's route does honour

    def not_honoured(self) -> str | None:
        """The first parameter set to a value the engine does not honour (see NOT_HONOURED), or None."""
        for name, neutral in NOT_HONOURED.items():
            fields = type(self).model_fields
            if name in fields and name not in self.honoured_here and getattr(self, name) not in neutral:
                return name
        return None


class StreamOptions(_Body):
    include_usage: bool = False


class CompletionRequest(_Body):
    """POST /v1/completions. `prompt` is text, a list of texts, token ids, or a list of token-id lists."""

    model: str | None = None
    prompt: Prompt
    max_tokens: NewTokens | None = Field(None, description="default: 16, or less when the limit is lower")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: ChoiceCount | None = Field(None, description="choices per prompt, each sampled on its own (seeded: "
                                                    "choice i from seed and i); prompts x n at most the limit")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=20), WHOLE] | None = None
    echo: bool = False
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM's extension: go on past EOS up to max_tokens")
    best_of: Choices | None = Field(None, description="not honoured yet: only 1")
    logit_bias: dict[BiasKey, Bias] | None = Field(None, description='{"token id": bias added to its logit}')
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    suffix: str | None = Field(None, description="not honoured yet: only empty")

    honoured_here: ClassVar[tuple[str, ...]] = ("logprobs",)  # /v1/completions' integer `logprobs` is honoured


class TextPart(_Body):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Body):
    """POST /v1/chat/completions; `stream: true` answers Server-Sent Events."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: ChoiceCount | None = Field(None, description="choices, each sampled on its own (seeded: choice i from seed "
                                                    "and i); at most the limit of prompts per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM's extension: go on past EOS up to max_tokens")
    logprobs: bool | None = Field(None, description="not honoured yet: only false")
    top_logprobs: Annotated[int, Field(ge=0, le=20), WHOLE] | None = Field(None, description="not honoured yet: only 0")
    logit_bias: dict[BiasKey, Bias] | None = Field(None, description='{"token id": bias added to its logit}')
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    response_format: dict[str, Any] | None = Field(None, description='not honoured yet: only {"type": "text"}')
    tools: list[dict[str, Any]] | None = Field(None, description="not honoured yet: only []")
    tool_choice: str | dict[str, Any] | None = Field(None, description='not honoured yet: only "none"')
    functions: list[dict[str, Any]] | None = Field(None, description="not honoured yet: only []")
    function_call: str | dict[str, Any] | None = Field(None, description='not honoured yet: only "none"')

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class _TokenizeBody(BaseModel):
    # Unknown fields refused: a body with both `prompt` and `messages` must not pass as either one.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    add_special_tokens: bool = Field(False, description="default false, as the completion routes add none")
    return_token_strs: bool = False


class TokenizePrompt(_TokenizeBody):
    """POST /tokenize of a text, as /v1/completions encodes it (vLLM's body)."""

    prompt: Text


class TokenizeChat(_TokenizeBody):
    """POST /tokenize of a conversation, as /v1/chat/completions renders and encodes it (vLLM's body)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]


TokenizeRequest = TokenizePrompt | TokenizeChat


class DetokenizeRequest(_Body):
    """POST /detokenize (vLLM's body): token ids back to text."""

    model: str | None = None
    tokens: list[TokenId]
