from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

CALLER_KEY_STATE_ACTIVE: CallerKeyState
CALLER_KEY_STATE_EXPIRED: CallerKeyState
CALLER_KEY_STATE_INTEGRITY_CHECK_FAILED: CallerKeyState
CALLER_KEY_STATE_REVOKED: CallerKeyState
CALLER_KEY_STATE_UNSPECIFIED: CallerKeyState
DESCRIPTOR: _descriptor.FileDescriptor
ROLE_ADMIN: Role
ROLE_CALLER: Role
ROLE_UNSPECIFIED: Role

class AddAdminPrincipalRequest(_message.Message):
    __slots__ = ["principal"]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    principal: str
    def __init__(self, principal: _Optional[str] = ...) -> None: ...

class AddAdminPrincipalResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class CallerKey(_message.Message):
    __slots__ = ["create_time", "creator", "description", "expire_time", "name", "revoke_time", "role", "state"]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    create_time: _timestamp_pb2.Timestamp
    creator: str
    description: str
    expire_time: _timestamp_pb2.Timestamp
    name: str
    revoke_time: _timestamp_pb2.Timestamp
    role: Role
    state: CallerKeyState
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[CallerKeyState, str]] = ..., create_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., creator: _Optional[str] = ...) -> None: ...

class CreateCallerKeyRequest(_message.Message):
    __slots__ = ["caller_key", "key_id"]
    CALLER_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    caller_key: CallerKey
    key_id: str
    def __init__(self, key_id: _Optional[str] = ..., caller_key: _Optional[_Union[CallerKey, _Mapping]] = ...) -> None: ...

class CreateCallerKeyResponse(_message.Message):
    __slots__ = ["caller_key", "key"]
    CALLER_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    caller_key: CallerKey
    key: str
    def __init__(self, caller_key: _Optional[_Union[CallerKey, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class DeleteCallerKeyRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCallerKeyResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListAdminPrincipalsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListAdminPrincipalsResponse(_message.Message):
    __slots__ = ["principals"]
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principals: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCallerKeysRequest(_message.Message):
    __slots__ = ["page_size", "page_token"]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCallerKeysResponse(_message.Message):
    __slots__ = ["caller_keys", "next_page_token"]
    CALLER_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    caller_keys: _containers.RepeatedCompositeFieldContainer[CallerKey]
    next_page_token: str
    def __init__(self, caller_keys: _Optional[_Iterable[_Union[CallerKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveAdminPrincipalRequest(_message.Message):
    __slots__ = ["principal"]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    principal: str
    def __init__(self, principal: _Optional[str] = ...) -> None: ...

class RemoveAdminPrincipalResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RevokeCallerKeyRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeCallerKeyResponse(_message.Message):
    __slots__ = ["already_revoked", "caller_key"]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    CALLER_KEY_FIELD_NUMBER: _ClassVar[int]
    already_revoked: bool
    caller_key: CallerKey
    def __init__(self, caller_key: _Optional[_Union[CallerKey, _Mapping]] = ..., already_revoked: bool = ...) -> None: ...

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class CallerKeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
