from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

AUDIT_UNAVAILABLE: ErrorReason
CREDENTIALS_REJECTED: ErrorReason
DESCRIPTOR: _descriptor.FileDescriptor
ERROR_REASON_UNSPECIFIED: ErrorReason
EVENTS_EXPIRED: ErrorReason
GRANT_LIMITED: ErrorReason
HUB_OFF: ErrorReason
INTEGRITY_CHECK_FAILED: ErrorReason
KEY_STILL_GRANTED: ErrorReason
LAST_ADMIN: ErrorReason
LAST_SECRET: ErrorReason
MASTER_KEY_MISSING: ErrorReason
MASTER_KEY_ROTATION_BLOCKED: ErrorReason
MIN_TTL_TOO_LONG: ErrorReason
NO_API_BASE_URL: ErrorReason
PROVIDER_REDIRECTED: ErrorReason
PROVIDER_UNAVAILABLE: ErrorReason
PROXY_ONLY: ErrorReason
RATE_LIMITED: ErrorReason
REFRESH_TOKEN_REVOKED: ErrorReason
REGION_NOT_CONFIGURED: ErrorReason
SECRET_EXPIRED: ErrorReason
SECRET_LIMIT: ErrorReason
STORAGE_UNAVAILABLE: ErrorReason

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
