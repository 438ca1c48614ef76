"""The OpenAI request bodies the server accepts (a subset, validated) and the server's limits.

Unknown fields are ignored, as OpenAI-compatible servers do, so clients that send vendor extras still work.
Value bounds that depend on the model or the limits (vocabulary, context, `max_tokens`) are checked by the routes,
which answer 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
TokenId = Annotated[int, Field(ge=0)]
Stop = str | Annotated[list[str], Field(max_length=4)] | None


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; a request beyond them answers 400."""

    max_prompt_tokens: int = 2048  # tokens in one prompt (also capped by the model's context)
    max_tokens: int = 512  # new tokens per prompt
    max_prompts: int = 32  # prompts in one /v1/completions request
    max_queue: int = 64  # requests waiting for the model; beyond it 429
    max_body_bytes: int = 4 * 2**20  # a request body beyond it is refused (413) before it is read
    max_dashboard_streams: int = 16  # concurrent /dashboard/events clients; beyond it 503


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class CompletionRequest(_Body):
    """POST /v1/completions. `prompt` is text, a list of texts, token ids, or a list of token-id lists."""

    model: str | None = None
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: Annotated[int, Field(ge=0, description="default: 16, or less when the limit is lower")] | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Annotated[int, Field(ge=1, le=1, description="one choice per prompt")] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None


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
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Annotated[int, Field(ge=1, le=1, description="one choice per request")] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Literal[False] | None = None
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
