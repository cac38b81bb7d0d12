from credbroker.v1 import account_pb2 as _account_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
EVENT_KIND_ACCOUNT_DELETED: EventKind
EVENT_KIND_ACCOUNT_LINKED: EventKind
EVENT_KIND_ACCOUNT_STATE_CHANGED: EventKind
EVENT_KIND_CALLER_KEY_CREATED: EventKind
EVENT_KIND_CALLER_KEY_REVOKED: EventKind
EVENT_KIND_INTEGRITY_CHECK_FAILED: EventKind
EVENT_KIND_SECRET_ADDED: EventKind
EVENT_KIND_SECRET_EXPIRED: EventKind
EVENT_KIND_SECRET_EXPIRING: EventKind
EVENT_KIND_SECRET_REJECTED: EventKind
EVENT_KIND_SECRET_REMOVED: EventKind
EVENT_KIND_UNSPECIFIED: EventKind

class Event(_message.Message):
    __slots__ = ["account", "caller_key", "credentials_expire_time", "id", "kind", "last_error", "new_state", "old_state", "principal", "secret", "time"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CALLER_KEY_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEW_STATE_FIELD_NUMBER: _ClassVar[int]
    OLD_STATE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    account: str
    caller_key: str
    credentials_expire_time: _timestamp_pb2.Timestamp
    id: str
    kind: EventKind
    last_error: _account_pb2.AccountError
    new_state: _account_pb2.AccountState
    old_state: _account_pb2.AccountState
    principal: str
    secret: _account_pb2.AccountSecret
    time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., account: _Optional[str] = ..., caller_key: _Optional[str] = ..., principal: _Optional[str] = ..., old_state: _Optional[_Union[_account_pb2.AccountState, str]] = ..., new_state: _Optional[_Union[_account_pb2.AccountState, str]] = ..., last_error: _Optional[_Union[_account_pb2.AccountError, _Mapping]] = ..., secret: _Optional[_Union[_account_pb2.AccountSecret, _Mapping]] = ..., credentials_expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ["accounts", "kinds", "resume_token"]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    resume_token: str
    def __init__(self, accounts: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ..., resume_token: _Optional[str] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ["event", "resume_token"]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    event: Event
    resume_token: str
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., resume_token: _Optional[str] = ...) -> None: ...

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
