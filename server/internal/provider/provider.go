// Package provider fetches access tokens from the providers an account can
// be linked to: JumpCloud service accounts and generic OAuth 2.0
// client-credentials endpoints, both through x/oauth2's clientcredentials.
// It also proves JumpCloud API keys, which need no token.
//
// Failures come back as *RejectedError (the provider refused the
// credentials), *RedirectedError (it answered with a redirect, which is
// never followed) or *UnavailableError (anything else upstream). None keeps
// a response body: only the OAuth2 `error` and `error_description`, and
// those withheld if they echo the credentials in any form.
package provider

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/secret"
)

// Kind is how the broker gets an account's credentials.
type Kind string

// Kinds of account, as stored.
const (
	KindJumpCloudServiceAccount Kind = "jumpcloud_service_account"
	KindOAuth2ClientCredentials Kind = "oauth2_client_credentials"
	KindJumpCloudAPIKey         Kind = "jumpcloud_api_key"
	KindOAuth2AuthorizationCode Kind = "oauth2_authorization_code"
)

// IsJumpCloud reports whether the kind is one of JumpCloud's.
func IsJumpCloud(kind Kind) bool {
	return kind == KindJumpCloudServiceAccount || kind == KindJumpCloudAPIKey
}

// JumpCloud regions, as stored.
const (
	RegionUS = "us"
	RegionEU = "eu"
	RegionIN = "in"
)

// Auth styles for OAuth2 accounts, as stored.
const (
	AuthStyleHeader = "header"
	AuthStyleBody   = "body"
)

// Expiry margins: a token is handed out only until this long before the
// provider says it expires. JumpCloud's own tooling uses 30 s; the generic
// margin is x/oauth2's own default.
const (
	jumpCloudExpiryMargin = 30 * time.Second
	oauth2ExpiryMargin    = 10 * time.Second
)

// Endpoints are the JumpCloud URLs the broker talks to. They are server
// configuration so tests and private deployments can point elsewhere.
type Endpoints struct {
	JumpCloudTokenURLUS string
	JumpCloudTokenURLEU string
	// JumpCloudTokenURLIN has no default: India's token endpoint is
	// unverified (third-party tools name
	// https://admin-oauth.id.in.jumpcloud.com/oauth2/token), so it must be
	// configured until JumpCloud documents it.
	JumpCloudTokenURLIN string
	JumpCloudAPIURLUS   string
	JumpCloudAPIURLEU   string
	JumpCloudAPIURLIN   string
}

// DefaultEndpoints are JumpCloud's documented endpoints: the US and EU
// token endpoints, and the three regions' APIs.
func DefaultEndpoints() Endpoints {
	return Endpoints{
		JumpCloudTokenURLUS: "https://admin-oauth.id.jumpcloud.com/oauth2/token",
		JumpCloudTokenURLEU: "https://admin-oauth.id.eu.jumpcloud.com/oauth2/token",
		JumpCloudAPIURLUS:   "https://console.jumpcloud.com/api",
		JumpCloudAPIURLEU:   "https://console.eu.jumpcloud.com/api",
		JumpCloudAPIURLIN:   "https://console.in.jumpcloud.com/api",
	}
}

// WithDefaults is e with JumpCloud's documented endpoint in place of each
// empty one.
func (e Endpoints) WithDefaults() Endpoints {
	d := DefaultEndpoints()
	e.JumpCloudTokenURLUS = cmp.Or(e.JumpCloudTokenURLUS, d.JumpCloudTokenURLUS)
	e.JumpCloudTokenURLEU = cmp.Or(e.JumpCloudTokenURLEU, d.JumpCloudTokenURLEU)
	e.JumpCloudAPIURLUS = cmp.Or(e.JumpCloudAPIURLUS, d.JumpCloudAPIURLUS)
	e.JumpCloudAPIURLEU = cmp.Or(e.JumpCloudAPIURLEU, d.JumpCloudAPIURLEU)
	e.JumpCloudAPIURLIN = cmp.Or(e.JumpCloudAPIURLIN, d.JumpCloudAPIURLIN)
	return e
}

// Credentials are everything a token request (or an API-key check) needs.
type Credentials struct {
	Kind     Kind
	ClientID string
	// ClientSecret is the client secret, or the API key of an API-key account.
	ClientSecret secret.String
	// JumpCloud.
	Region string
	OrgID  string
	// OAuth2 client credentials.
	TokenURL       string
	Scopes         []string
	AuthStyle      string
	EndpointParams map[string]string
	APIBaseURL     string
	// OAuth2 authorization code: where users sign in, the sign-in
	// redirect's extra parameters, the lifetime of tokens whose answer has
	// no expires_in (zero: such answers are refused), and the refresh
	// token to refresh with.
	AuthURL         string
	AuthParams      map[string]string
	DefaultLifetime time.Duration
	RefreshToken    secret.String
}

// Token is an access token as the broker hands it out.
type Token struct {
	AccessToken secret.String
	// TokenType is normalized ("Bearer" for bearer tokens).
	TokenType string
	// Expiry is the provider's expiry less the kind's safety margin.
	Expiry time.Time
	// Obtained is when the token endpoint answered.
	Obtained time.Time
	// RefreshToken is the refresh token the answer carried (authorization
	// code only): a new one if the provider rotated it, else the one the
	// request was made with; zero if it has none.
	RefreshToken secret.String
}

// DefaultTimeout bounds a token request when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Config configures a Client. Zero fields take the documented defaults,
// except the Endpoints, which New takes as they are (see WithDefaults).
type Config struct {
	// Endpoints are the JumpCloud URLs; DefaultConfig has JumpCloud's own.
	Endpoints
	// Timeout bounds each token request, whatever the caller's own
	// deadline. Default DefaultTimeout.
	Timeout time.Duration
	// Now is the clock that token expiry is computed on. Default time.Now.
	Now func() time.Time
	// OnRequest is told of every request to a provider: its kind, its
	// Result and how long it took. Default: nothing.
	OnRequest func(kind, result string, took time.Duration)
	// WrapTransport, if set, wraps the HTTP transport (for tracing).
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// DefaultConfig is JumpCloud's documented endpoints and DefaultTimeout.
func DefaultConfig() Config {
	return Config{Endpoints: DefaultEndpoints(), Timeout: DefaultTimeout}
}

// Client fetches tokens. It is safe for concurrent use.
type Client struct {
	endpoints Endpoints
	http      *http.Client
	timeout   time.Duration
	now       func() time.Time
	onRequest func(kind, result string, took time.Duration)
}

// maxIdlePerHost is how many idle connections a Client keeps to a host:
// more than the refresher's and the linking's requests at once.
const maxIdlePerHost = 64

// New returns a Client.
func New(cfg Config) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OnRequest == nil {
		cfg.OnRequest = func(string, string, time.Duration) {}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ResponseHeaderTimeout = cfg.Timeout
	// The refresher asks one host (the region's token endpoint) for many
	// tokens at once: connections it keeps idle spare each next request a
	// TLS handshake (Go keeps 2 a host by default).
	transport.MaxIdleConnsPerHost = maxIdlePerHost
	var rt http.RoundTripper = transport
	if cfg.WrapTransport != nil {
		rt = cfg.WrapTransport(rt)
	}
	return &Client{
		endpoints: cfg.Endpoints,
		http: &http.Client{Timeout: cfg.Timeout, Transport: rt,
			// A redirect would take the credentials to another URL than
			// the account's: it is a *RedirectedError instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout:   cfg.Timeout,
		now:       cfg.Now,
		onRequest: cfg.OnRequest,
	}
}

// observe tells OnRequest of a request of kind begun at start that ended with err.
func (c *Client) observe(kind Kind, start time.Time, err error) {
	c.onRequest(string(kind), Result(err), time.Since(start))
}

// Result names a request's outcome for metrics: "ok", "rejected" (the
// provider refused the credentials), "redirected", "unavailable" or "error".
func Result(err error) string {
	var rejected *RejectedError
	var redirected *RedirectedError
	var unavailable *UnavailableError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &rejected):
		return "rejected"
	case errors.As(err, &redirected):
		return "redirected"
	case errors.As(err, &unavailable):
		return "unavailable"
	}
	return "error"
}

// TokenURL is the token endpoint the account uses; empty for API keys.
func (c *Client) TokenURL(cr Credentials) string {
	switch cr.Kind {
	case KindJumpCloudServiceAccount:
		tokenURL, _ := c.jumpCloudURLs(cr.Region)
		return tokenURL
	case KindJumpCloudAPIKey:
		return ""
	}
	return cr.TokenURL
}

// APIBaseURL is the API that the account's credentials are for.
func (c *Client) APIBaseURL(cr Credentials) string {
	if !IsJumpCloud(cr.Kind) {
		return cr.APIBaseURL
	}
	_, apiURL := c.jumpCloudURLs(cr.Region)
	return apiURL
}

func (c *Client) jumpCloudURLs(region string) (tokenURL, apiURL string) {
	switch region {
	case RegionEU:
		return c.endpoints.JumpCloudTokenURLEU, c.endpoints.JumpCloudAPIURLEU
	case RegionIN:
		return c.endpoints.JumpCloudTokenURLIN, c.endpoints.JumpCloudAPIURLIN
	}
	return c.endpoints.JumpCloudTokenURLUS, c.endpoints.JumpCloudAPIURLUS
}

// ErrNoRefreshToken: a provider's first answer to an authorization-code
// account held no refresh token.
var ErrNoRefreshToken = grpcerr.New(codes.FailedPrecondition,
	"the provider issued no refresh token, so the broker could not keep the account's tokens fresh: ask it for offline access (often the scope offline_access, or the parameter access_type=offline)")

// ErrRegionNotConfigured: the account's region has no token endpoint on
// this broker (India's, until configured).
var ErrRegionNotConfigured = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_REGION_NOT_CONFIGURED,
	"JumpCloud's India token endpoint is not configured on this broker (it is unverified, so there is no default): start the broker with --jumpcloud-token-url-in, or link an API key")

// Headers are the extra headers every API request with the account's token
// must carry: x-org-id for JumpCloud multi-tenant admins.
func Headers(cr Credentials) map[string]string {
	if IsJumpCloud(cr.Kind) && cr.OrgID != "" {
		return map[string]string{"x-org-id": cr.OrgID}
	}
	return nil
}

// Fetch requests a new token. The request is bounded by the client's own
// timeout; ctx may end it sooner.
func (c *Client) Fetch(ctx context.Context, cr Credentials) (Token, error) {
	start := time.Now()
	tok, err := c.fetch(ctx, cr)
	c.observe(cr.Kind, start, err)
	return tok, err
}

func (c *Client) fetch(ctx context.Context, cr Credentials) (Token, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c.http)

	if cr.Kind == KindOAuth2AuthorizationCode {
		return c.refresh(ctx, cr)
	}
	cfg, margin := c.config(cr)
	if cfg.TokenURL == "" && cr.Kind == KindJumpCloudServiceAccount {
		return Token{}, ErrRegionNotConfigured
	}
	if err := usable("token URL", cfg.TokenURL); err != nil {
		return Token{}, err
	}
	tok, err := cfg.Token(ctx)
	if err != nil {
		return Token{}, classify(err, cr)
	}
	return c.token(tok, margin, 0)
}

// token is the broker's token of an answer: its lifetime (expires_in, or
// else defaultLifetime if not zero) on this client's clock, less margin.
func (c *Client) token(tok *oauth2.Token, margin, defaultLifetime time.Duration) (Token, error) {
	now := c.now()
	var lifetime time.Duration
	switch {
	case !tok.Expiry.IsZero():
		// x/oauth2 turned expires_in into an Expiry on the wall clock; take
		// the lifetime back out so that expiry follows this client's clock.
		lifetime = time.Until(tok.Expiry).Round(time.Second)
	case defaultLifetime > 0:
		lifetime = defaultLifetime
	default:
		return Token{}, &UnavailableError{Message: "the token endpoint's answer has no expires_in"}
	}
	if lifetime <= margin {
		return Token{}, &UnavailableError{Message: fmt.Sprintf("the token endpoint issued a token that expires within the %s safety margin", margin)}
	}
	return Token{
		AccessToken:  secret.New(tok.AccessToken),
		TokenType:    tok.Type(),
		Expiry:       now.Add(lifetime - margin),
		Obtained:     now,
		RefreshToken: secret.New(tok.RefreshToken),
	}, nil
}

func (c *Client) config(cr Credentials) (*clientcredentials.Config, time.Duration) {
	if cr.Kind == KindJumpCloudServiceAccount {
		// client_secret_basic with grant_type=client_credentials&scope=api.
		return &clientcredentials.Config{
			ClientID:     cr.ClientID,
			ClientSecret: cr.ClientSecret.Reveal(),
			TokenURL:     c.TokenURL(cr),
			Scopes:       []string{"api"},
			AuthStyle:    oauth2.AuthStyleInHeader,
		}, jumpCloudExpiryMargin
	}
	style := oauth2.AuthStyleInHeader
	if cr.AuthStyle == AuthStyleBody {
		style = oauth2.AuthStyleInParams
	}
	params := url.Values{}
	for k, v := range cr.EndpointParams {
		params.Set(k, v)
	}
	return &clientcredentials.Config{
		ClientID:       cr.ClientID,
		ClientSecret:   cr.ClientSecret.Reveal(),
		TokenURL:       cr.TokenURL,
		Scopes:         cr.Scopes,
		AuthStyle:      style,
		EndpointParams: params,
	}, oauth2ExpiryMargin
}

// RejectedError means the token endpoint refused the credentials (HTTP 400
// or 401). Code and Description are the provider's OAuth2 `error` and
// `error_description`, sanitized: each is Withheld if it echoed the
// credentials.
type RejectedError struct {
	StatusCode  int
	Code        string
	Description string
}

// WithoutDescription is e as callers of GetToken and the egress proxy see
// it: the provider's `error` code only, and only if it is one of OAuth2's
// registered codes (NotACode otherwise). Its description, and any other
// code, are for admins, since a provider may put anything in them.
func (e *RejectedError) WithoutDescription() *RejectedError {
	c := *e
	c.Description = ""
	if c.Code != "" && !registeredCodes[c.Code] {
		c.Code = NotACode
	}
	return &c
}

// registeredCodes are the error codes of the OAuth 2.0 token endpoint and
// bearer-token registries (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7591 §3.2.2).
var registeredCodes = map[string]bool{
	"invalid_request": true, "invalid_client": true, "invalid_grant": true, "unauthorized_client": true,
	"unsupported_grant_type": true, "invalid_scope": true, "access_denied": true, "server_error": true,
	"temporarily_unavailable": true, "invalid_token": true, "insufficient_scope": true, "invalid_client_metadata": true,
}

func (e *RejectedError) Error() string {
	msg := fmt.Sprintf("the provider rejected the credentials (HTTP %d)", e.StatusCode)
	if e.Code != "" {
		msg += ": " + e.Code
	}
	if e.Description != "" {
		msg += ": " + e.Description
	}
	return msg
}

// GRPCStatus: an admin must fix the stored credentials at the provider;
// the provider's error and description (if any) are in the ErrorInfo.
func (e *RejectedError) GRPCStatus() *status.Status {
	meta := map[string]string{}
	if e.Code != "" {
		meta["provider_error"] = e.Code
	}
	if e.Description != "" {
		meta["provider_error_description"] = e.Description
	}
	return grpcerr.Status(codes.FailedPrecondition, e.Error()+"; an admin must fix the credentials at the provider",
		grpcerr.Info(credbrokerv1.ErrorReason_CREDENTIALS_REJECTED, meta))
}

// EnteredRejectedError is a rejection of credentials an admin has just
// entered (to link an account, or add a secret): what to check is what
// they typed, and nothing was stored.
type EnteredRejectedError struct {
	*RejectedError
	Kind Kind
}

func (e *EnteredRejectedError) Unwrap() error { return e.RejectedError }

// GRPCStatus is the RejectedError's status, saying what to check.
func (e *EnteredRejectedError) GRPCStatus() *status.Status {
	check := map[Kind]string{
		KindJumpCloudServiceAccount: "the client ID and client secret as JumpCloud showed them, and the region of the organization (an EU or India service account is unknown in the US region)",
		KindJumpCloudAPIKey:         "the API key as JumpCloud showed it, the region of its organization and, for a multi-tenant admin, the organization ID",
		KindOAuth2ClientCredentials: "the client ID, the client secret and the token URL",
		KindOAuth2AuthorizationCode: "the client ID, the client secret and the token URL",
	}[e.Kind]
	st := e.RejectedError.GRPCStatus().Proto()
	st.Message = fmt.Sprintf("%s; check %s: nothing was stored", e.Error(), check)
	return status.FromProto(st)
}

// Entered marks a rejection of credentials of kind an admin has just
// entered (see EnteredRejectedError); other errors are returned as they
// are.
func Entered(err error, kind Kind) error {
	var rejected *RejectedError
	if errors.As(err, &rejected) {
		return &EnteredRejectedError{RejectedError: rejected, Kind: kind}
	}
	return err
}

// UnavailableError means the token endpoint could not be used right now:
// unreachable, timed out, 429, 5xx, or an unusable answer.
type UnavailableError struct {
	// Message is the broker's own summary; it never quotes a response body.
	Message string
	// RetryAfter is the provider's Retry-After, if it sent one.
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string { return "token endpoint unavailable: " + e.Message }

// GRPCStatus is UNAVAILABLE, with the provider's Retry-After, if any.
func (e *UnavailableError) GRPCStatus() *status.Status { return e.StatusRetryingAfter(e.RetryAfter) }

// StatusRetryingAfter is the error's status telling callers to retry after
// retry (no RetryInfo if that is not positive).
func (e *UnavailableError) StatusRetryingAfter(retry time.Duration) *status.Status {
	info := grpcerr.Info(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil)
	if retry <= 0 {
		return grpcerr.Status(codes.Unavailable, e.Error(), info)
	}
	return grpcerr.Status(codes.Unavailable, e.Error(), info, grpcerr.Retry(retry.Round(time.Second)))
}

// RedirectedError means the provider answered with a redirect (HTTP 3xx).
// The broker never follows one, since the request carries the credentials.
// It keeps only the status: the Location may hold anything.
type RedirectedError struct{ StatusCode int }

func (e *RedirectedError) Error() string {
	return fmt.Sprintf("the provider answered with a redirect (HTTP %d), which the broker does not follow: check the account's URLs", e.StatusCode)
}

// GRPCStatus: an admin must fix the account's URLs.
func (e *RedirectedError) GRPCStatus() *status.Status {
	return grpcerr.Status(codes.FailedPrecondition, e.Error(), grpcerr.Info(credbrokerv1.ErrorReason_PROVIDER_REDIRECTED, nil))
}

// maxRetryAfter bounds how long a Retry-After can silence an account.
const maxRetryAfter = time.Hour

// classify turns a failed request with cr into the package's errors.
func classify(err error, cr Credentials) error {
	return classifyEchoing(err, secret.NewDetector(cr.ClientSecret, cr.ClientID).And(secret.NewDetector(cr.RefreshToken, "")))
}

// classifyEchoing is classify of a request whose secrets echo finds: the
// provider's error fields are withheld if they hold any.
func classifyEchoing(err error, echo secret.Detector) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		code := re.Response.StatusCode
		switch {
		case code == http.StatusBadRequest || code == http.StatusUnauthorized:
			return &RejectedError{
				StatusCode:  code,
				Code:        providerCode(re.ErrorCode, echo),
				Description: providerText(re.ErrorDescription, maxDescriptionLen, echo),
			}
		case isRedirect(code):
			return &RedirectedError{StatusCode: code}
		case code == http.StatusTooManyRequests:
			return &UnavailableError{Message: "HTTP 429 rate limited", RetryAfter: retryAfter(re.Response.Header.Get("Retry-After"))}
		default:
			return &UnavailableError{Message: fmt.Sprintf("HTTP %d", code), RetryAfter: retryAfter(re.Response.Header.Get("Retry-After"))}
		}
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		return &UnavailableError{Message: "timed out"}
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &netErr):
		return &UnavailableError{Message: "could not connect"}
	}
	// x/oauth2 reports unparsable JSON and a missing access_token as plain errors.
	return &UnavailableError{Message: "malformed answer"}
}

func isRedirect(code int) bool { return code >= 300 && code < 400 }

// retryAfter parses a Retry-After header: seconds, or an HTTP date.
func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.Atoi(strings.TrimSpace(h)); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = time.Until(t)
	}
	return max(0, min(d, maxRetryAfter))
}

// Withheld replaces a provider-supplied field that echoed the credentials in
// any form. The whole field is withheld, since cutting the secret out of it
// could miss a form of it.
const Withheld = "[withheld: the provider's answer echoed the credentials]"

// Bounds of the provider-supplied fields that are kept.
const (
	maxCodeLen        = 64
	maxDescriptionLen = 200
)

// NotACode replaces a provider's OAuth2 `error` that is not shaped like an
// error code: it is shown to callers, who must see nothing else.
const NotACode = "[withheld: not an OAuth2 error code]"

// oauthErrorCode is the shape of OAuth2 error codes: lower-case words such
// as invalid_client (RFC 6749 §5.2), at most maxCodeLen characters.
var oauthErrorCode = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// providerCode keeps a provider's OAuth2 `error` if it is shaped like an
// error code and does not echo the credentials.
func providerCode(s string, echo secret.Detector) string {
	switch {
	case s == "":
		return ""
	case echo.FoundIn(s):
		return Withheld
	case len(s) > maxCodeLen || !oauthErrorCode.MatchString(s):
		return NotACode
	}
	return s
}

// providerText keeps a provider-supplied field fit to show: only the
// characters RFC 6749 allows in its error fields (%x20-21 / %x23-5B /
// %x5D-7E), at most limit of them, and nothing at all (Withheld) if it
// holds the credentials in any form the detector knows.
func providerText(s string, limit int, echo secret.Detector) string {
	kept := strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
	// Both: removing characters can join pieces of the secret, and the
	// secret itself may hold characters that are removed.
	if echo.FoundIn(s) || echo.FoundIn(kept) {
		return Withheld
	}
	if len(kept) > limit {
		kept = kept[:limit] + "..."
	}
	return kept
}
