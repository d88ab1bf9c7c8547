"""Where the two modes of the software switch differ, in one place.

Spec mode follows the P4Runtime specification (1.4); BMv2 mode reproduces what BMv2
simple_switch_grpc (PI, reporting P4Runtime 1.3.0) does where a controller can trip on it. The
per-update message texts are BMv2's in both modes (fixtures/p4runtime-bmv2/README.md, table 25);
only the codes and the semantics differ. Each flag names the fixture surprise it reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import StatusCode

# google.rpc.Code values (the numbers carried in p4.v1.Error.canonical_code and google.rpc.Status)
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14

_BY_NUMBER = {code.value[0]: code for code in StatusCode}


def grpc_code(number: int) -> StatusCode:
    """The grpc.StatusCode for a google.rpc.Code number."""
    return _BY_NUMBER[number]


ERROR_SPACE = "ALL-sswitch-p4org"  # BMv2's p4.v1.Error.space for failed updates


@dataclass(frozen=True, slots=True)
class Behavior:
    """Mode switches consulted by arbitration, writes, reads and pipeline config."""

    bmv2: bool
    api_version: str
    # arbitration (02, 03)
    roles_honoured: bool  # 1: BMv2 ignores Role.name / WriteRequest.role entirely
    promote_on_primary_loss: bool  # 3: pre-1.1 failover
    unknown_device_is_phantom: bool  # 6: BMv2 accepts arbitration for any device id
    open_access_without_streams: bool  # 7: no streams -> id-less Write/Set accepted
    # bytestrings (23)
    empty_bytestring_is_zero: bool
    bytestring_code: int
    # writes (20-28)
    table_full_code: int
    table_full_message: str
    modify_requires_action: bool  # 25: "'action' field must be set for non-default entries"
    reject_is_const_in_write: bool  # 28: BMv2 accepts and ignores is_const
    duplicate_param_bug: bool  # 24: only the parameter count is checked
    const_table_write_code: int  # 21/33: BMv2 fails at the target (UNKNOWN)
    # reads (30-36)
    read_action_filter: bool  # 31: BMv2 ignores an action given in a read
    read_errors_per_entity: bool  # spec: UNKNOWN + one p4.v1.Error per read request
    single_read_response: bool  # 30: BMv2 sends exactly one ReadResponse
    # pipeline config (11-18)
    strict_p4info: bool  # 11: BMv2 accepts corrupted P4Infos
    verify_needs_config: bool  # 11: BMv2 VERIFY accepts an empty config
    commit_nothing_code: int  # 13: BMv2 "Error in second phase of device update"
    commit_rejects_config: bool  # 13: BMv2 ignores a config attached to COMMIT
    reconcile_fails_with_counters: bool  # 15
    get_before_set_code: int  # 18: BMv2 FAILED_PRECONDITION, spec OK without config


SPEC = Behavior(
    bmv2=False,
    api_version="1.4.0",
    roles_honoured=True,
    promote_on_primary_loss=False,
    unknown_device_is_phantom=False,
    open_access_without_streams=False,
    empty_bytestring_is_zero=False,
    bytestring_code=OUT_OF_RANGE,
    table_full_code=RESOURCE_EXHAUSTED,
    table_full_message="Table is full",
    modify_requires_action=False,
    reject_is_const_in_write=True,
    duplicate_param_bug=False,
    const_table_write_code=PERMISSION_DENIED,
    read_action_filter=True,
    read_errors_per_entity=True,
    single_read_response=False,
    strict_p4info=True,
    verify_needs_config=True,
    commit_nothing_code=NOT_FOUND,
    commit_rejects_config=True,
    reconcile_fails_with_counters=False,
    get_before_set_code=OK,
)

BMV2 = Behavior(
    bmv2=True,
    api_version="1.3.0",
    roles_honoured=False,
    promote_on_primary_loss=True,
    unknown_device_is_phantom=True,
    open_access_without_streams=True,
    empty_bytestring_is_zero=True,
    bytestring_code=INVALID_ARGUMENT,
    table_full_code=UNKNOWN,
    table_full_message="Error when adding match entry to target",
    modify_requires_action=True,
    reject_is_const_in_write=False,
    duplicate_param_bug=True,
    const_table_write_code=UNKNOWN,
    read_action_filter=False,
    read_errors_per_entity=False,
    single_read_response=True,
    strict_p4info=False,
    verify_needs_config=False,
    commit_nothing_code=UNKNOWN,
    commit_rejects_config=False,
    reconcile_fails_with_counters=True,
    get_before_set_code=FAILED_PRECONDITION,
)


def behavior_for(bmv2: bool) -> Behavior:
    return BMV2 if bmv2 else SPEC


# RPC-level messages (BMv2's texts, used in both modes)
NOT_PRIMARY = "Not primary"
NO_PIPELINE = "No forwarding pipeline config set for this device"
ATOMICITY_UNSUPPORTED = "Support for atomic write modes has not been implemented yet"
INVALID_P4_ID = "Invalid P4 id"
INCORRECT_ENTITY = "Incorrect entity type"
REGISTER_WRITES_UNSUPPORTED = "Register writes are not supported yet"  # 10-registers.txt
REGISTER_READS_UNSUPPORTED = "Register reads are not supported yet"
