"""The deterministic state machine: command schema, network/member model, and apply into ctrl.db (LMDB).

Knows nothing of Raft: the driver hands it (index, term, data) entries and reads results and model state back.
"""
from hactl.fsm.coerce import ValidationError
from hactl.fsm.commands import Command, CommandError, SCHEMA_VERSION, decode, encode
from hactl.fsm.machine import FormatError, StateMachine
from hactl.fsm.result import ErrorCode, Result

__all__ = ["Command", "CommandError", "ErrorCode", "FormatError", "Result", "SCHEMA_VERSION", "StateMachine",
           "ValidationError", "decode", "encode"]
