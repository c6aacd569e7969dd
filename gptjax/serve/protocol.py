"""The OpenAI wire format: request bodies (pydantic), the error shape, and the plain-text chat template.

Only what the `openai` client sends for the routes we serve is modelled. Unknown fields are ignored, as OpenAI's
server does; fields we cannot honour (`suffix`, `logit_bias`, `best_of` > `n`, tools) are a 400 naming the field
rather than being silently dropped.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import pydantic
from pydantic import BaseModel, Field

# OpenAI caps `stop` at 4 strings and completions `logprobs` at 5; chat's `top_logprobs` at 20.
MAX_STOP_STRINGS = 4
MAX_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20
MAX_BEAMS = 32  # Beams per prompt; each is a row of the beam program's batch.


class APIError(Exception):
  """An error the client caused or must wait out, rendered as OpenAI's `{"error": {...}}` body.

  Attributes:
    status: HTTP status (400 bad request, 404 unknown route, 429 queue full, 503 loading).
    message: What was wrong, naming the value.
    param: The request field at fault, or None.
    type: OpenAI's error type (`invalid_request_error`, ...).
    code: A machine-readable code or None (`context_length_exceeded`, `model_not_found`, ...).
    headers: Extra response headers (`Retry-After` for 429 / 503).
  """

  def __init__(self, status: int, message: str, *, param: Optional[str] = None,
               type: str = "invalid_request_error", code: Optional[str] = None,  # pylint: disable=redefined-builtin
               headers: Optional[dict[str, str]] = None):
    super().__init__(message)
    self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
    self.headers = headers or {}

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
  return APIError(400, message, param=param, code=code)


class StreamOptions(BaseModel):
  include_usage: bool = False


class _Sampling(BaseModel):
  """Fields shared by completions and chat completions, with OpenAI's defaults and ranges."""
  model_config = pydantic.ConfigDict(extra="ignore")

  model: str
  max_tokens: Optional[int] = Field(default=None, ge=0)
  temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
  top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
  n: Optional[int] = Field(default=None, ge=1, le=128)
  stream: Optional[bool] = False
  stream_options: Optional[StreamOptions] = None
  stop: Optional[Union[str, list[str]]] = None
  presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
  frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
  seed: Optional[int] = Field(default=None, ge=-2**63, lt=2**64)
  user: Optional[str] = None
  logit_bias: Optional[dict[str, float]] = None
  # Extensions (vLLM's names): passed through `extra_body` by the openai client.
  top_k: Optional[int] = Field(default=None, ge=0)
  repetition_penalty: Optional[float] = Field(default=None, gt=0.0)
  ignore_eos: Optional[bool] = False  # Generate max_tokens whatever the model says (benchmarks).
  # Beam search and constrained decoding, with `LanguageModel.generate`'s names (gptjax/serve/beams.py): such a
  # request runs as one program outside the slot batch, and is never streamed.
  num_beams: Optional[int] = Field(default=None, ge=1, le=MAX_BEAMS)
  length_penalty: Optional[float] = Field(default=None, allow_inf_nan=False)
  early_stopping: Optional[Union[bool, Literal["never"]]] = None
  num_return_sequences: Optional[int] = Field(default=None, ge=1, le=128)  # The same as n: choices per prompt.
  no_repeat_ngram_size: Optional[int] = Field(default=None, ge=0)
  min_new_tokens: Optional[int] = Field(default=None, ge=0)

  @pydantic.field_validator("stop")
  @classmethod
  def _check_stop(cls, value):
    if value is None:
      return []
    stops = [value] if isinstance(value, str) else value
    if len(stops) > MAX_STOP_STRINGS:
      raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    if any(not s for s in stops):
      raise ValueError("a stop string is empty")
    return stops


# A prompt: a string, a list of strings, a token-id list, or a list of token-id lists.
Prompt = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(_Sampling):
  prompt: Prompt
  echo: Optional[bool] = False
  logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_LOGPROBS)
  suffix: Optional[str] = None
  best_of: Optional[int] = Field(default=None, ge=1)


class ChatMessage(BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  role: Literal["system", "developer", "user", "assistant"]
  # A string, or OpenAI's list of content parts of which only {"type": "text"} ones are understood.
  content: Union[str, list[dict]]
  name: Optional[str] = None


class ChatCompletionRequest(_Sampling):
  messages: list[ChatMessage] = Field(min_length=1)
  logprobs: Optional[bool] = False
  top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
  max_completion_tokens: Optional[int] = Field(default=None, ge=1)
  tools: Optional[list] = None


class TokenizeRequest(BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  model: Optional[str] = None
  prompt: Optional[str] = None
  messages: Optional[list[ChatMessage]] = None


class DetokenizeRequest(BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  model: Optional[str] = None
  tokens: list[int]


# ----------------------------------------------------------------------------------------------------------------------
# The chat template.
# ----------------------------------------------------------------------------------------------------------------------

CHAT_TEMPLATE_DOC = """\
GPT-2 and GPT-1 were trained on plain web text and have no chat format (no special role tokens). The server turns
`messages` into plain text, one line block per message, and asks the model to continue after "Assistant:":

    System: <content of a system / developer message>
    User: <content>
    Assistant: <content>
    ...
    Assistant:

Each message is "<Role>: <content>" followed by a newline. Generation stops at a line that starts a new turn
("\\nUser:", "\\nSystem:"), which never appears in the reply, as well as at `stop` and <|endoftext|>. The reply
usually begins with a space (GPT-2's tokens carry the space before a word)."""

_ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
# Turn markers the model may invent: stopping there keeps it from writing the user's next line.
CHAT_STOPS = ("\nUser:", "\nSystem:")


def message_text(message: ChatMessage, index: int) -> str:
  if isinstance(message.content, str):
    return message.content
  parts = []
  for part in message.content:
    if part.get("type") != "text" or not isinstance(part.get("text"), str):
      raise bad_request(f"messages[{index}].content: only text parts are supported, got type "
                        f"{part.get('type')!r}", param=f"messages.{index}.content")
    parts.append(part["text"])
  return "".join(parts)


def render_chat(messages: list[ChatMessage]) -> str:
  """The prompt text of a conversation (see `CHAT_TEMPLATE_DOC`)."""
  lines = [f"{_ROLE_NAMES[m.role]}: {message_text(m, i)}\n" for i, m in enumerate(messages)]
  return "".join(lines) + "Assistant:"
