package store

import "time"

// Every bucket the broker uses, in one place.
var (
	// metaBucket holds store-wide values such as the master-key check.
	metaBucket = []byte("meta")
	// accountsBucket maps account id to Account.
	accountsBucket = []byte("accounts")
	// tokensBucket maps account id to TokenState. It is separate from
	// accounts so that token refreshes never rewrite account records.
	tokensBucket = []byte("tokens")
	// callerKeysBucket maps key id to CallerKey.
	callerKeysBucket = []byte("caller_keys")
	// adminsBucket maps a client-certificate principal to AdminPrincipal.
	adminsBucket = []byte("admin_principals")
	// hubSessionsBucket maps a keyed hash of a Hub session's secret to
	// HubSession.
	hubSessionsBucket = []byte("hub_sessions")
	// connectSessionsBucket maps a keyed hash of a connect link's secret
	// to ConnectSession.
	connectSessionsBucket = []byte("connect_sessions")
	// authorizationsBucket maps a keyed hash of a sign-in's state to
	// Authorization.
	authorizationsBucket = []byte("authorizations")
	// auditBucket maps an AuditPos (16 bytes: big-endian UnixNano time, then
	// sequence number) to AuditEvent, so keys sort by time.
	auditBucket = []byte("audit")
	// outboxBucket maps an event's time (16 hex digits of UnixNano), "-"
	// and id to an Event not yet relayed into the event log.
	outboxBucket = []byte("event_outbox")
	// eventsBucket is the event log: it maps a sequence number (16 hex
	// digits) to Event.
	eventsBucket = []byte("events")
	// webhooksBucket maps a webhook id to Webhook.
	webhooksBucket = []byte("webhooks")
	// webhookDeliveriesBucket maps a webhook id to WebhookDelivery: kept
	// apart from Webhook, which admins change, since the replica that
	// delivers writes it after every attempt.
	webhookDeliveriesBucket = []byte("webhook_deliveries")

	// dataBuckets hold records, each stored with its tag (see
	// Authenticate). The meta bucket holds values that authenticate
	// themselves (the key check, the wrapped MAC key, both sealed by the
	// master key), the database id the record key is derived from, and
	// flags.
	dataBuckets = [][]byte{accountsBucket, tokensBucket, callerKeysBucket, adminsBucket, hubSessionsBucket, connectSessionsBucket, authorizationsBucket, auditBucket, outboxBucket, eventsBucket, webhooksBucket, webhookDeliveriesBucket}

	keyCheckKey     = []byte("master-key-check")
	macKeyKey       = []byte("mac-key")
	bootstrappedKey = []byte("bootstrapped")
	// databaseIDKey holds the database's random id, set when its records
	// were first tagged; a database without one predates tagging.
	databaseIDKey = []byte("database-id")
	// The engine keeps "compact-pending" in this bucket too (see
	// boltdb.DB.CompactPending).
	// principalsTypedKey marks a store whose principals are typed (see TypePrincipals).
	principalsTypedKey = []byte("principals-typed")
)

// recordVersion is the version of the record layouts below. A build refuses
// records of a version it does not know rather than misread them.
const recordVersion = 1

type versioned interface{ version() int }

// Account is a linked account as stored.
type Account struct {
	Version     int               `json:"v"`
	ID          string            `json:"id"`
	DisplayName string            `json:"display_name,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Provider is "jumpcloud_service_account", "jumpcloud_api_key" or
	// "oauth2_client_credentials" or "oauth2_authorization_code".
	Provider string `json:"provider"`
	ClientID string `json:"client_id"`
	// JumpCloud: "us" or "eu", and an optional organization id.
	Region string `json:"region,omitempty"`
	OrgID  string `json:"org_id,omitempty"`
	// OAuth2 client credentials.
	TokenURL       string            `json:"token_url,omitempty"`
	Scopes         []string          `json:"scopes,omitempty"`
	AuthStyle      string            `json:"auth_style,omitempty"`
	EndpointParams map[string]string `json:"endpoint_params,omitempty"`
	APIBaseURL     string            `json:"api_base_url,omitempty"`
	// OAuth2 authorization code: where its users sign in, the sign-in
	// redirect's extra parameters, and the lifetime of tokens whose
	// answer has no expires_in (zero: such answers are refused).
	AuthURL         string            `json:"auth_url,omitempty"`
	AuthParams      map[string]string `json:"auth_params,omitempty"`
	DefaultLifetime time.Duration     `json:"default_lifetime,omitempty"`
	// WrappedKey is the account's data key, wrapped by the master key.
	WrappedKey []byte `json:"wrapped_key"`
	// Secrets are the client secrets, or the API keys of an API-key
	// account: at most two, so that they can be rotated.
	Secrets []Secret `json:"secrets,omitempty"`
	// SealedSecret is the one secret of records written before Secrets;
	// the broker moves it into Secrets when it starts.
	SealedSecret []byte    `json:"sealed_secret,omitempty"`
	CreateTime   time.Time `json:"create_time"`
	UpdateTime   time.Time `json:"update_time"`
	// Grants are the principals that may get the account's tokens, sorted.
	Grants []Grant `json:"grants,omitempty"`

	// Tampered: the stored account (or its token state) failed its
	// integrity check; only ID is set. Never stored.
	Tampered bool `json:"-"`
}

// Secret is one of an account's secrets.
type Secret struct {
	// ID is the secret's fingerprint: not secret, shown to admins.
	ID string `json:"id"`
	// Sealed is the secret sealed under the account's data key (FieldClientSecret).
	Sealed     []byte    `json:"sealed"`
	CreateTime time.Time `json:"create_time"`
	// ExpireTime is when the provider stops accepting it; zero if never.
	ExpireTime time.Time `json:"expire_time,omitzero"`
}

// Grant lets one principal get an account's tokens or, with limits, make
// only some calls through the egress proxy.
type Grant struct {
	Principal  string    `json:"principal"`
	CreateTime time.Time `json:"create_time"`
	Creator    string    `json:"creator"`
	// HTTPMethods and PathPrefixes limit the grant to these proxied calls
	// (sorted, without duplicates); unset, it is not limited.
	HTTPMethods  []string `json:"http_methods,omitempty"`
	PathPrefixes []string `json:"path_prefixes,omitempty"`
}

func (a *Account) version() int { return a.Version }

func (a *Account) markTampered(id string) { *a = Account{ID: id, Tampered: true} }

// TokenState is an account's latest token and health, kept so that a restart
// neither re-fetches valid tokens nor forgets that credentials were rejected.
type TokenState struct {
	Version int `json:"v"`
	// SealedToken is the access token sealed under the account's data key
	// (FieldAccessToken); empty when there is none.
	SealedToken []byte `json:"sealed_token,omitempty"`
	// SealedRefreshToken is an authorization-code account's refresh token,
	// sealed under the account's data key (FieldRefreshToken). A rotated
	// one is stored here before the access token that came with it is
	// served.
	SealedRefreshToken []byte    `json:"sealed_refresh_token,omitempty"`
	TokenType          string    `json:"token_type,omitempty"`
	Expiry             time.Time `json:"expiry,omitzero"`
	Obtained           time.Time `json:"obtained,omitzero"`
	// State is "active", "degraded" or "needs_attention".
	State string `json:"state"`
	// LastError is set while the account is not active.
	LastError *Failure `json:"last_error,omitempty"`
	// SecretUse is, per secret ID, when it last got a token and whether the
	// provider rejected it since.
	SecretUse map[string]SecretUse `json:"secret_use,omitempty"`
	// ExpiryWarned is when the broker last warned that the account's
	// secrets expire soon.
	ExpiryWarned time.Time `json:"expiry_warned,omitzero"`
	// ExpiredNoted are the secrets whose expire time the broker saw pass
	// (and made a secret_expired event of).
	ExpiredNoted map[string]bool `json:"expired_noted,omitempty"`
}

func (t *TokenState) version() int { return t.Version }

// SecretUse is what the broker saw of one secret.
type SecretUse struct {
	LastUsed time.Time `json:"last_used,omitzero"`
	// Rejected is set if the provider rejected the secret after LastUsed.
	Rejected *Failure `json:"rejected,omitempty"`
}

// Failure is a sanitized token-request failure: never a response body.
type Failure struct {
	// Reason is "credentials_rejected", "provider_redirected",
	// "provider_unavailable", "secret_expired" or "internal".
	Reason                   string    `json:"reason"`
	Message                  string    `json:"message"`
	ProviderError            string    `json:"provider_error,omitempty"`
	ProviderErrorDescription string    `json:"provider_error_description,omitempty"`
	Time                     time.Time `json:"time"`
}

// CallerKey is a caller key as stored: only its keyed hash, never the key.
type CallerKey struct {
	Version     int    `json:"v"`
	ID          string `json:"id"`
	Description string `json:"description,omitempty"`
	// Role is "admin" or "caller".
	Role string `json:"role"`
	// Hash is the MAC key's hash of the key (see keyring.MACKey).
	Hash       []byte    `json:"hash"`
	CreateTime time.Time `json:"create_time"`
	ExpireTime time.Time `json:"expire_time,omitzero"`
	RevokeTime time.Time `json:"revoke_time,omitzero"`
	Creator    string    `json:"creator"`

	// Tampered: the stored key failed its integrity check; only ID is
	// set. Never stored.
	Tampered bool `json:"-"`
}

func (k *CallerKey) version() int { return k.Version }

func (k *CallerKey) markTampered(id string) { *k = CallerKey{ID: id, Tampered: true} }

// AdminPrincipal is a client-certificate principal with the admin role.
type AdminPrincipal struct {
	Version    int       `json:"v"`
	Principal  string    `json:"principal"`
	CreateTime time.Time `json:"create_time"`
	Creator    string    `json:"creator"`

	// Tampered: the stored record failed its integrity check; only
	// Principal is set. Never stored.
	Tampered bool `json:"-"`
}

func (a *AdminPrincipal) version() int { return a.Version }

func (a *AdminPrincipal) markTampered(p string) { *a = AdminPrincipal{Principal: p, Tampered: true} }

// AuditEvent is one entry of the audit trail. It never holds a token, key
// or secret: TokenFingerprint is a keyed hash.
type AuditEvent struct {
	Version          int       `json:"v"`
	Time             time.Time `json:"time"`
	Principal        string    `json:"principal,omitempty"`
	Method           string    `json:"method"`
	Resource         string    `json:"resource,omitempty"`
	Code             string    `json:"code"`
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	Detail           string    `json:"detail,omitempty"`
	PeerAddress      string    `json:"peer_address,omitempty"`
	// Proxy is set for calls to the egress proxy.
	Proxy *ProxyCall `json:"proxy,omitempty"`

	// OnCommit, if set, is called once the event is committed with the
	// change it records (so the gate knows not to record the call again).
	// Never stored.
	OnCommit func() `json:"-"`
	// Seq, if set, is the event's sequence number in its position (see
	// AuditPos), given by NextAuditSeq before the event was journaled, so
	// that storing it again after a crash stores it at the same place.
	// AppendAudit numbers the events that have none.
	Seq uint64 `json:"-"`
}

// ProxyCall is what the audit trail keeps of an egress-proxy call: never a
// body, a query string or a header value.
type ProxyCall struct {
	HTTPMethod    string `json:"http_method"`
	Path          string `json:"path"`
	Status        int    `json:"status,omitempty"`
	RequestBytes  int64  `json:"request_bytes,omitempty"`
	ResponseBytes int64  `json:"response_bytes,omitempty"`
}

func (e *AuditEvent) version() int { return e.Version }
