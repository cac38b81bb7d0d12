from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from credbroker.v1 import error_reason_pb2 as _error_reason_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

ACCOUNT_STATE_ACTIVE: AccountState
ACCOUNT_STATE_DEGRADED: AccountState
ACCOUNT_STATE_NEEDS_ATTENTION: AccountState
ACCOUNT_STATE_REASON_BROKER_FAULT: AccountStateReason
ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED: AccountStateReason
ACCOUNT_STATE_REASON_INTEGRITY_CHECK_FAILED: AccountStateReason
ACCOUNT_STATE_REASON_PROVIDER_REDIRECTED: AccountStateReason
ACCOUNT_STATE_REASON_PROVIDER_UNAVAILABLE: AccountStateReason
ACCOUNT_STATE_REASON_REFRESH_TOKEN_REVOKED: AccountStateReason
ACCOUNT_STATE_REASON_SECRET_EXPIRED: AccountStateReason
ACCOUNT_STATE_REASON_SECRET_EXPIRING: AccountStateReason
ACCOUNT_STATE_REASON_UNSPECIFIED: AccountStateReason
ACCOUNT_STATE_UNSPECIFIED: AccountState
AUTH_STYLE_BODY: AuthStyle
AUTH_STYLE_HEADER: AuthStyle
AUTH_STYLE_UNSPECIFIED: AuthStyle
DESCRIPTOR: _descriptor.FileDescriptor
PROVIDER_JUMPCLOUD_API_KEY: Provider
PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT: Provider
PROVIDER_OAUTH2_AUTHORIZATION_CODE: Provider
PROVIDER_OAUTH2_CLIENT_CREDENTIALS: Provider
PROVIDER_UNSPECIFIED: Provider
REGION_EU: Region
REGION_IN: Region
REGION_UNSPECIFIED: Region
REGION_US: Region

class Account(_message.Message):
    __slots__ = ["api_base_url", "auth_style", "authorization_params", "authorization_url", "client_id", "create_time", "credentials_expire_time", "display_name", "endpoint_params", "grants", "labels", "last_error", "last_token_time", "name", "org_id", "provider", "region", "scopes", "secrets", "state", "state_reason", "token_url", "update_time"]
    class AuthorizationParamsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EndpointParamsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    API_BASE_URL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_URL_FIELD_NUMBER: _ClassVar[int]
    AUTH_STYLE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_TOKEN_TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKEN_URL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    api_base_url: str
    auth_style: AuthStyle
    authorization_params: _containers.ScalarMap[str, str]
    authorization_url: str
    client_id: str
    create_time: _timestamp_pb2.Timestamp
    credentials_expire_time: _timestamp_pb2.Timestamp
    display_name: str
    endpoint_params: _containers.ScalarMap[str, str]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    labels: _containers.ScalarMap[str, str]
    last_error: AccountError
    last_token_time: _timestamp_pb2.Timestamp
    name: str
    org_id: str
    provider: Provider
    region: Region
    scopes: _containers.RepeatedScalarFieldContainer[str]
    secrets: _containers.RepeatedCompositeFieldContainer[AccountSecret]
    state: AccountState
    state_reason: AccountStateReason
    token_url: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., provider: _Optional[_Union[Provider, str]] = ..., client_id: _Optional[str] = ..., region: _Optional[_Union[Region, str]] = ..., org_id: _Optional[str] = ..., api_base_url: _Optional[str] = ..., token_url: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., auth_style: _Optional[_Union[AuthStyle, str]] = ..., endpoint_params: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[AccountState, str]] = ..., create_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_token_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[_Union[AccountError, _Mapping]] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., state_reason: _Optional[_Union[AccountStateReason, str]] = ..., secrets: _Optional[_Iterable[_Union[AccountSecret, _Mapping]]] = ..., credentials_expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., authorization_url: _Optional[str] = ..., authorization_params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AccountError(_message.Message):
    __slots__ = ["message", "provider_error", "provider_error_description", "reason", "time"]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ERROR_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    message: str
    provider_error: str
    provider_error_description: str
    reason: _error_reason_pb2.ErrorReason
    time: _timestamp_pb2.Timestamp
    def __init__(self, reason: _Optional[_Union[_error_reason_pb2.ErrorReason, str]] = ..., message: _Optional[str] = ..., provider_error: _Optional[str] = ..., provider_error_description: _Optional[str] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AccountSecret(_message.Message):
    __slots__ = ["create_time", "expire_time", "last_use_time", "rejected", "secret_id"]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_TIME_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    last_use_time: _timestamp_pb2.Timestamp
    rejected: AccountError
    secret_id: str
    def __init__(self, secret_id: _Optional[str] = ..., create_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_use_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., rejected: _Optional[_Union[AccountError, _Mapping]] = ...) -> None: ...

class AddAccountGrantRequest(_message.Message):
    __slots__ = ["http_methods", "name", "path_prefixes", "principal"]
    HTTP_METHODS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    http_methods: _containers.RepeatedScalarFieldContainer[str]
    name: str
    path_prefixes: _containers.RepeatedScalarFieldContainer[str]
    principal: str
    def __init__(self, name: _Optional[str] = ..., principal: _Optional[str] = ..., http_methods: _Optional[_Iterable[str]] = ..., path_prefixes: _Optional[_Iterable[str]] = ...) -> None: ...

class AddAccountGrantResponse(_message.Message):
    __slots__ = ["account"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class AddAccountSecretRequest(_message.Message):
    __slots__ = ["expire_time", "name", "secret"]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    expire_time: _timestamp_pb2.Timestamp
    name: str
    secret: str
    def __init__(self, name: _Optional[str] = ..., secret: _Optional[str] = ..., expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddAccountSecretResponse(_message.Message):
    __slots__ = ["account", "secret_id"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    account: Account
    secret_id: str
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ..., secret_id: _Optional[str] = ...) -> None: ...

class CreateAccountRequest(_message.Message):
    __slots__ = ["account", "account_id", "jumpcloud_api_key", "jumpcloud_service_account", "oauth2_client_credentials", "secret_expire_time", "validate_only"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    JUMPCLOUD_API_KEY_FIELD_NUMBER: _ClassVar[int]
    JUMPCLOUD_SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OAUTH2_CLIENT_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    account: Account
    account_id: str
    jumpcloud_api_key: JumpCloudAPIKeyCredentials
    jumpcloud_service_account: JumpCloudServiceAccountCredentials
    oauth2_client_credentials: OAuth2ClientCredentials
    secret_expire_time: _timestamp_pb2.Timestamp
    validate_only: bool
    def __init__(self, account_id: _Optional[str] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., jumpcloud_service_account: _Optional[_Union[JumpCloudServiceAccountCredentials, _Mapping]] = ..., oauth2_client_credentials: _Optional[_Union[OAuth2ClientCredentials, _Mapping]] = ..., jumpcloud_api_key: _Optional[_Union[JumpCloudAPIKeyCredentials, _Mapping]] = ..., validate_only: bool = ..., secret_expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAccountResponse(_message.Message):
    __slots__ = ["account"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class DeleteAccountRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteAccountResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ["account"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ["create_time", "creator", "http_methods", "path_prefixes", "principal"]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    HTTP_METHODS_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    create_time: _timestamp_pb2.Timestamp
    creator: str
    http_methods: _containers.RepeatedScalarFieldContainer[str]
    path_prefixes: _containers.RepeatedScalarFieldContainer[str]
    principal: str
    def __init__(self, principal: _Optional[str] = ..., create_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., creator: _Optional[str] = ..., http_methods: _Optional[_Iterable[str]] = ..., path_prefixes: _Optional[_Iterable[str]] = ...) -> None: ...

class JumpCloudAPIKeyCredentials(_message.Message):
    __slots__ = ["api_key", "org_id", "region"]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    org_id: str
    region: Region
    def __init__(self, api_key: _Optional[str] = ..., region: _Optional[_Union[Region, str]] = ..., org_id: _Optional[str] = ...) -> None: ...

class JumpCloudServiceAccountCredentials(_message.Message):
    __slots__ = ["client_id", "client_secret", "org_id", "region"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    client_secret: str
    org_id: str
    region: Region
    def __init__(self, client_id: _Optional[str] = ..., client_secret: _Optional[str] = ..., region: _Optional[_Union[Region, str]] = ..., org_id: _Optional[str] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ["page_size", "page_token", "state", "state_reason"]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: AccountState
    state_reason: AccountStateReason
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[AccountState, str]] = ..., state_reason: _Optional[_Union[AccountStateReason, str]] = ...) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ["accounts", "next_page_token"]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    next_page_token: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OAuth2AuthorizationCode(_message.Message):
    __slots__ = ["api_base_url", "auth_style", "authorization_params", "authorization_url", "client_id", "client_secret", "default_token_lifetime", "scopes", "token_url"]
    class AuthorizationParamsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    API_BASE_URL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_URL_FIELD_NUMBER: _ClassVar[int]
    AUTH_STYLE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TOKEN_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_URL_FIELD_NUMBER: _ClassVar[int]
    api_base_url: str
    auth_style: AuthStyle
    authorization_params: _containers.ScalarMap[str, str]
    authorization_url: str
    client_id: str
    client_secret: str
    default_token_lifetime: _duration_pb2.Duration
    scopes: _containers.RepeatedScalarFieldContainer[str]
    token_url: str
    def __init__(self, authorization_url: _Optional[str] = ..., token_url: _Optional[str] = ..., client_id: _Optional[str] = ..., client_secret: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., authorization_params: _Optional[_Mapping[str, str]] = ..., auth_style: _Optional[_Union[AuthStyle, str]] = ..., api_base_url: _Optional[str] = ..., default_token_lifetime: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class OAuth2ClientCredentials(_message.Message):
    __slots__ = ["api_base_url", "auth_style", "client_id", "client_secret", "endpoint_params", "scopes", "token_url"]
    class EndpointParamsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    API_BASE_URL_FIELD_NUMBER: _ClassVar[int]
    AUTH_STYLE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_URL_FIELD_NUMBER: _ClassVar[int]
    api_base_url: str
    auth_style: AuthStyle
    client_id: str
    client_secret: str
    endpoint_params: _containers.ScalarMap[str, str]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    token_url: str
    def __init__(self, token_url: _Optional[str] = ..., client_id: _Optional[str] = ..., client_secret: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., auth_style: _Optional[_Union[AuthStyle, str]] = ..., endpoint_params: _Optional[_Mapping[str, str]] = ..., api_base_url: _Optional[str] = ...) -> None: ...

class RemoveAccountGrantRequest(_message.Message):
    __slots__ = ["name", "principal"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    principal: str
    def __init__(self, name: _Optional[str] = ..., principal: _Optional[str] = ...) -> None: ...

class RemoveAccountGrantResponse(_message.Message):
    __slots__ = ["account"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class RemoveAccountSecretRequest(_message.Message):
    __slots__ = ["name", "secret_id"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    secret_id: str
    def __init__(self, name: _Optional[str] = ..., secret_id: _Optional[str] = ...) -> None: ...

class RemoveAccountSecretResponse(_message.Message):
    __slots__ = ["account"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class UpdateAccountRequest(_message.Message):
    __slots__ = ["account", "update_mask"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    account: Account
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateAccountResponse(_message.Message):
    __slots__ = ["account"]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class Provider(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class Region(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class AuthStyle(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class AccountState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class AccountStateReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
