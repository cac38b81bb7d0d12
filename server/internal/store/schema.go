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

	allBuckets = [][]byte{metaBucket, accountsBucket, tokensBucket}

	keyCheckKey = []byte("master-key-check")
)

// recordVersion is the version of the record layouts below. A build refuses
// records of a version it does not know rather than misread them.
const recordVersion = 1

// Field names that sealed values are bound to (see seal.DataKey).
const (
	FieldClientSecret = "client_secret"
	FieldAccessToken  = "access_token"
)

type versioned interface{ version() int }

// Account is a linked account as stored.
type Account struct {
	Version     int               `json:"v"`
	ID          string            `json:"id"`
	DisplayName string            `json:"display_name,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Provider is "jumpcloud_service_account" or "oauth2_client_credentials".
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
	// WrappedKey is the account's data key, wrapped by the master key.
	WrappedKey []byte `json:"wrapped_key"`
	// SealedSecret is the client secret sealed under the data key (FieldClientSecret).
	SealedSecret []byte    `json:"sealed_secret"`
	CreateTime   time.Time `json:"create_time"`
	UpdateTime   time.Time `json:"update_time"`
}

func (a *Account) version() int { return a.Version }

// TokenState is an account's latest token and health, kept so that a restart
// neither re-fetches valid tokens nor forgets that credentials were rejected.
type TokenState struct {
	Version int `json:"v"`
	// SealedToken is the access token sealed under the account's data key
	// (FieldAccessToken); empty when there is none.
	SealedToken []byte    `json:"sealed_token,omitempty"`
	TokenType   string    `json:"token_type,omitempty"`
	Expiry      time.Time `json:"expiry,omitzero"`
	Obtained    time.Time `json:"obtained,omitzero"`
	// State is "active", "degraded" or "needs_attention".
	State string `json:"state"`
	// LastError is set while the account is not active.
	LastError *Failure `json:"last_error,omitempty"`
}

func (t *TokenState) version() int { return t.Version }

// Failure is a sanitized token-request failure: never a response body.
type Failure struct {
	// Reason is "credentials_rejected", "provider_unavailable" or "internal".
	Reason                   string    `json:"reason"`
	Message                  string    `json:"message"`
	ProviderError            string    `json:"provider_error,omitempty"`
	ProviderErrorDescription string    `json:"provider_error_description,omitempty"`
	Time                     time.Time `json:"time"`
}
