"""What applying one command produced: a Result, and the error codes it can carry."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ErrorCode(enum.StrEnum):
    BAD_COMMAND = "BAD_COMMAND"  # the entry does not decode as a command of a known schema version
    INVALID = "INVALID"  # a field fails validation (the proposer should have caught it first)
    NOT_FOUND = "NOT_FOUND"  # network or member does not exist
    CONFLICT = "CONFLICT"  # an IP already assigned to another member; member.create of an existing member
    NOT_INITIALIZED = "NOT_INITIALIZED"  # model command before cluster.init
    ALREADY_INITIALIZED = "ALREADY_INITIALIZED"
    FULL = "FULL"  # all 2^24-1 network ids of this controller are taken
    RESTORE = "RESTORE"  # restore.* out of sequence (unknown restore id, wrong chunk, counts differ)
    INTERNAL = "INTERNAL"  # apply hit a bug; the command's writes were rolled back (deterministically)
    KEY_REUSED = "KEY_REUSED"  # the request id is remembered for another request (fingerprints differ)

    @property
    def http_status(self) -> int:
        """The status the management API answers with."""
        return _HTTP[self]


_HTTP = {
    ErrorCode.BAD_COMMAND: 400, ErrorCode.INVALID: 400, ErrorCode.NOT_FOUND: 404, ErrorCode.CONFLICT: 409,
    ErrorCode.NOT_INITIALIZED: 503, ErrorCode.ALREADY_INITIALIZED: 409, ErrorCode.FULL: 503,
    ErrorCode.RESTORE: 409, ErrorCode.INTERNAL: 500,
    # 422 rather than 409: retrying the same request with that key can never succeed; it needs a new key.
    ErrorCode.KEY_REUSED: 422,
}


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    value: dict[str, Any] | None = None  # the network/member (or cluster/restore summary) after the command
    error: str | None = None  # an ErrorCode value
    field: str | None = None  # the offending field, when one is to blame
    message: str | None = None

    @staticmethod
    def success(value: dict[str, Any] | None = None) -> "Result":
        return Result(True, value)

    @staticmethod
    def failure(error: ErrorCode, message: str, field: str | None = None) -> "Result":
        return Result(False, None, str(error), field, message)

    def to_wire(self) -> list[Any]:
        return [self.ok, self.value, self.error, self.field, self.message]

    @staticmethod
    def from_wire(v: list[Any]) -> "Result":
        ok, value, error, field, message = v
        return Result(bool(ok), value, error, field, message)
