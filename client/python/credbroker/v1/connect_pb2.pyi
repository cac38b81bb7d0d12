from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from credbroker.v1 import account_pb2 as _account_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectSession(_message.Message):
    __slots__ = ["account_id", "create_time", "creator", "display_name", "expire_time", "name", "provider"]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    create_time: _timestamp_pb2.Timestamp
    creator: str
    display_name: str
    expire_time: _timestamp_pb2.Timestamp
    name: str
    provider: _account_pb2.Provider
    def __init__(self, name: _Optional[str] = ..., account_id: _Optional[str] = ..., provider: _Optional[_Union[_account_pb2.Provider, str]] = ..., display_name: _Optional[str] = ..., create_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., creator: _Optional[str] = ...) -> None: ...

class CreateConnectSessionRequest(_message.Message):
    __slots__ = ["account_id", "display_name", "oauth2_authorization_code", "provider", "ttl"]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    OAUTH2_AUTHORIZATION_CODE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    display_name: str
    oauth2_authorization_code: _account_pb2.OAuth2AuthorizationCode
    provider: _account_pb2.Provider
    ttl: _duration_pb2.Duration
    def __init__(self, account_id: _Optional[str] = ..., provider: _Optional[_Union[_account_pb2.Provider, str]] = ..., display_name: _Optional[str] = ..., ttl: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., oauth2_authorization_code: _Optional[_Union[_account_pb2.OAuth2AuthorizationCode, _Mapping]] = ...) -> None: ...

class CreateConnectSessionResponse(_message.Message):
    __slots__ = ["connect_session", "url"]
    CONNECT_SESSION_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    connect_session: ConnectSession
    url: str
    def __init__(self, connect_session: _Optional[_Union[ConnectSession, _Mapping]] = ..., url: _Optional[str] = ...) -> None: ...

class ListConnectSessionsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListConnectSessionsResponse(_message.Message):
    __slots__ = ["connect_sessions"]
    CONNECT_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    connect_sessions: _containers.RepeatedCompositeFieldContainer[ConnectSession]
    def __init__(self, connect_sessions: _Optional[_Iterable[_Union[ConnectSession, _Mapping]]] = ...) -> None: ...

class RevokeConnectSessionRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeConnectSessionResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...
