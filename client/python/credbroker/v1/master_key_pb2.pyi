from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RotateMasterKeyRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RotateMasterKeyResponse(_message.Message):
    __slots__ = ["accounts_resealed", "from_key_id", "records_retagged", "records_tampered", "to_key_id"]
    ACCOUNTS_RESEALED_FIELD_NUMBER: _ClassVar[int]
    FROM_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_RETAGGED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_TAMPERED_FIELD_NUMBER: _ClassVar[int]
    TO_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    accounts_resealed: int
    from_key_id: str
    records_retagged: int
    records_tampered: int
    to_key_id: str
    def __init__(self, from_key_id: _Optional[str] = ..., to_key_id: _Optional[str] = ..., accounts_resealed: _Optional[int] = ..., records_retagged: _Optional[int] = ..., records_tampered: _Optional[int] = ...) -> None: ...
