"""What a Bedrock failure means to the gateway: the status a client gets, and whether another try may help.

EksinferError
└── UpstreamError
    └── BedrockError      .status (HTTP status for the client), .code (ours, `bedrock_<aws code>`),
                          .retryable (another attempt, here or on another tier, may succeed)

AWS error codes (Bedrock Runtime service model 2023-09-30, errors of Converse and ConverseStream) map as:

    AWS code                     AWS   client  retryable  why
    ThrottlingException          429   429     yes        account quota; passes with time
    ServiceUnavailableException  503   503     yes
    ModelNotReadyException       429   503     yes        the model is loading: not the client's rate
    ModelTimeoutException        408   504     yes        the model took too long: a gateway timeout
    InternalServerException      500   502     yes        AWS SDKs' standard mode retries 5xx too
    modelStreamErrorException    event 502     yes        a model stream that broke
    ModelErrorException          424   502     no         the model failed on this input
    ValidationException          400   400     no         the request itself is wrong
    AccessDeniedException        403   502     no         see below
    ResourceNotFoundException    404   502     no         see below

403 and 404 from Bedrock are about the gateway's identity and configuration (the IAM role lacks a permission,
model access is not enabled, the mapped model id is wrong), never about the client's own key or its model
name: the client gets 502 (the upstream refused *us*), and an operator sees the code in the log. Retrying
with the same identity cannot help, so they are not retryable; a cascade may still have served the request
from an earlier tier. Other AWS auth codes (UnrecognizedClientException, ExpiredTokenException, ...) and a
missing credential chain are treated the same way.

Transport failures: a refused or timed-out connect is 502 retryable, a read timeout 504 retryable, a stream
that breaks mid-way 502 retryable (before the first chunk a retry is invisible to the client).

Messages never carry credentials: `redact` removes the access key id, secret key and session token of the
client's credentials and anything shaped like one (AWS access key ids, 40-character secrets, long tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from eksinfer.errors import UpstreamError


class BedrockError(UpstreamError):
    """A Bedrock call that failed; `str()` is safe to log and to send to the client."""

    def __init__(self, status: int, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.status, self.code, self.retryable = status, code, retryable

    def __repr__(self) -> str:
        return f"BedrockError(status={self.status}, code={self.code!r}, retryable={self.retryable})"


@dataclass(frozen=True, slots=True)
class ErrorClass:
    status: int
    retryable: bool


# Keys are lower-cased: in-stream exception events name the same errors in camelCase.
_BY_CODE: dict[str, ErrorClass] = {
    "throttlingexception": ErrorClass(429, True),
    "serviceunavailableexception": ErrorClass(503, True),
    "modelnotreadyexception": ErrorClass(503, True),
    "modeltimeoutexception": ErrorClass(504, True),
    "internalserverexception": ErrorClass(502, True),
    "modelstreamerrorexception": ErrorClass(502, True),
    "modelerrorexception": ErrorClass(502, False),
    "validationexception": ErrorClass(400, False),
    "accessdeniedexception": ErrorClass(502, False),
    "resourcenotfoundexception": ErrorClass(502, False),
}


def classify(code: str, aws_status: int | None) -> ErrorClass:
    """The class of an AWS error code; an unknown code is judged by its HTTP status (5xx retryable)."""
    known = _BY_CODE.get(code.lower())
    if known is not None:
        return known
    if aws_status is not None and aws_status >= 500:
        return ErrorClass(502, True)
    if aws_status == 429:
        return ErrorClass(429, True)
    return ErrorClass(502, False)


def error_code(aws_code: str) -> str:
    """Our code for an AWS error: `bedrock_` + the snake-cased name without `Exception`."""
    name = aws_code[0].upper() + aws_code[1:] if aws_code else "Unknown"
    name = name.removesuffix("Exception")
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return f"bedrock_{snake or 'unknown'}"


# AWS access key ids (AKIA long-term, ASIA temporary), and base64-ish runs of 40+ characters: secret keys
# are 40, session tokens several hundred.
_SHAPES = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b|[A-Za-z0-9/+=]{40,}")
MAX_MESSAGE_CHARS = 300


def redact(message: str, secrets: Iterable[str | None] = ()) -> str:
    """`message` without any of `secrets` or anything shaped like a credential, cut to 300 characters."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    message = _SHAPES.sub("[redacted]", message)
    return message[:MAX_MESSAGE_CHARS]


def from_aws(
    code: str, message: str, aws_status: int | None, secrets: Iterable[str | None] = ()
) -> BedrockError:
    """The BedrockError for an AWS error code and message (from a ClientError or an in-stream event)."""
    cls = classify(code, aws_status)
    text = redact(f"Amazon Bedrock {code or 'error'}: {message}".rstrip(": "), secrets)
    return BedrockError(cls.status, error_code(code), text, retryable=cls.retryable)
