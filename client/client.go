// Package client is the Go client of credbroker. It hands a service the
// tokens of a linked account as an oauth2.TokenSource, or as an
// http.RoundTripper that also adds the account's headers (x-org-id for
// JumpCloud multi-tenant admins) and resolves paths against the account's
// API base URL, so that no service ever holds a client secret.
//
// The service proves who it is with a caller key (WithCallerKey) or a
// client certificate (WithTLS), and gets tokens only for accounts that grant
// it access.
//
//	c, err := client.New("broker.internal:50051", client.WithTLS(tlsConfig), client.WithCallerKey(key))
//	httpClient := oauth2.NewClient(ctx, c.TokenSource("accounts/acme"))
//
// Given the addresses of several replicas of a cluster, comma-separated,
// the client spreads its calls over them and retries a GetToken that one
// answers UNAVAILABLE (stopped, draining, or cut off from its storage) on
// another:
//
//	c, err := client.New("broker-0:50051,broker-1:50051,broker-2:50051", ...)
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/loopback"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Client talks to one broker, or to the replicas of a cluster. It is safe
// for concurrent use.
type Client struct {
	conn   *grpc.ClientConn
	tokens credbrokerv1.TokenServiceClient
	opts   options
}

type options struct {
	dialOptions []grpc.DialOption
	earlyExpiry time.Duration
	callTimeout time.Duration
	tls         *tls.Config
	callerKey   string
}

// Option configures a Client.
type Option func(*options)

// WithDialOptions adds gRPC dial options, such as transport credentials.
// Without transport credentials the connection is plaintext, which the
// broker accepts only on loopback.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// WithTLS connects over TLS: cfg.RootCAs verifies the broker, and
// cfg.Certificates (or GetClientCertificate) proves the caller's principal
// with a client certificate (mTLS).
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls = cfg }
}

// WithCallerKey proves the caller's identity with a caller key ("cbk_...")
// on every call. Without WithTLS, New refuses a target that is not a
// loopback address, so the key never crosses a network in the clear.
func WithCallerKey(key string) Option {
	return func(o *options) { o.callerKey = key }
}

// CallerKey is gRPC per-call credentials that send a caller key, for
// connections made without this package:
//
//	grpc.NewClient(target, creds, grpc.WithPerRPCCredentials(client.CallerKey(key)))
func CallerKey(key string) credentials.PerRPCCredentials { return callerKey{"Bearer " + key} }

type callerKey struct{ header string }

func (k callerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": k.header}, nil
}

// RequireTransportSecurity is false so that plaintext works on loopback;
// New checks the target instead.
func (callerKey) RequireTransportSecurity() bool { return false }

// WithEarlyExpiry sets how long before a token's expire_time the client
// stops using its cached copy and asks the broker again. Default 30s.
func WithEarlyExpiry(d time.Duration) Option {
	return func(o *options) { o.earlyExpiry = d }
}

// WithCallTimeout bounds each GetToken call made on a cache miss (an
// oauth2.TokenSource has no context of its own). Default 15s.
func WithCallTimeout(d time.Duration) Option {
	return func(o *options) { o.callTimeout = d }
}

// ServiceConfig is the gRPC service config of the client's connection:
// calls go round robin over the addresses the target resolves to, and
// GetToken, which changes nothing, is tried again on UNAVAILABLE, on the
// next address, up to 5 attempts over about a second (gRPC's most), so
// that a call outlasts an etcd leader election. Connections made without
// this package can use it with grpc.WithDefaultServiceConfig.
const ServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "credbroker.v1.TokenService", "method": "GetToken"}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// New returns a client for the broker at target: host:port, any gRPC
// target name, or the host:port of several replicas separated by commas.
// It does not connect until first used.
func New(target string, opts ...Option) (*Client, error) {
	o := options{
		dialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		earlyExpiry: 30 * time.Second,
		callTimeout: 15 * time.Second,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tls != nil {
		o.dialOptions = append(o.dialOptions, grpc.WithTransportCredentials(credentials.NewTLS(o.tls)))
	}
	var addrs []string
	for _, a := range strings.Split(target, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("credbroker client: no broker address")
	}
	if o.callerKey != "" {
		for _, a := range addrs {
			if o.tls == nil && !loopback.Addr(a) {
				return nil, fmt.Errorf("credbroker client: refusing to send a caller key in plaintext to %q; use WithTLS", a)
			}
		}
		o.dialOptions = append(o.dialOptions, grpc.WithPerRPCCredentials(CallerKey(o.callerKey)))
	}
	o.dialOptions = append(o.dialOptions, grpc.WithDefaultServiceConfig(ServiceConfig))
	if target = addrs[0]; len(addrs) > 1 {
		target = replicas(addrs, &o)
	}
	conn, err := grpc.NewClient(target, o.dialOptions...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, tokens: credbrokerv1.NewTokenServiceClient(conn), opts: o}, nil
}

// replicas resolves a target to addrs, each verified under its own host
// name over TLS, and returns the target to dial.
func replicas(addrs []string, o *options) string {
	r := manual.NewBuilderWithScheme("credbroker-replicas")
	var state resolver.State
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			host = a
		}
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	r.InitialState(state)
	o.dialOptions = append(o.dialOptions, grpc.WithResolvers(r))
	return r.Scheme() + ":///replicas"
}

// Conn is the client's connection, for calling the broker's other
// services with the same identity:
//
//	accounts := credbrokerv1.NewAccountServiceClient(c.Conn())
func (c *Client) Conn() grpc.ClientConnInterface { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// TokenSource returns the tokens of the named account ("accounts/{id}").
// A token is cached in the process until shortly before it expires; the
// cache hit takes no lock and allocates nothing. Errors are the broker's
// gRPC status errors.
func (c *Client) TokenSource(name string) oauth2.TokenSource {
	return c.source(name)
}

func (c *Client) source(name string) *tokenSource {
	return &tokenSource{client: c, name: name}
}

// minUse is how long a fetched token must stay usable after early expiry.
const minUse = time.Minute

type tokenSource struct {
	client *Client
	name   string

	current atomic.Pointer[cachedToken]
	mu      sync.Mutex // one GetToken at a time per source
}

// cachedToken is shared by every caller and never modified.
type cachedToken struct {
	token     *oauth2.Token
	useUntil  time.Time
	apiBase   *url.URL
	headers   map[string]string
	authValue string
}

func (ts *tokenSource) Token() (*oauth2.Token, error) {
	ct, err := ts.cached()
	if err != nil {
		return nil, err
	}
	return ct.token, nil
}

func (ts *tokenSource) cached() (*cachedToken, error) {
	if ct := ts.current.Load(); ct != nil && time.Now().Before(ct.useUntil) {
		return ct, nil
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ct := ts.current.Load(); ct != nil && time.Now().Before(ct.useUntil) {
		return ct, nil // another caller refreshed it meanwhile
	}
	o := ts.client.opts
	ctx, cancel := context.WithTimeout(context.Background(), o.callTimeout)
	defer cancel()
	// Ask for a token that stays usable for a while after early expiry, so
	// the broker refreshes instead of handing over one about to be dropped.
	resp, err := ts.client.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: ts.name, MinTtl: durationpb.New(o.earlyExpiry + minUse)})
	if err != nil {
		return nil, err
	}
	ct := &cachedToken{
		token: &oauth2.Token{
			AccessToken: resp.GetAccessToken(),
			TokenType:   resp.GetTokenType(),
			Expiry:      resp.GetExpireTime().AsTime(),
		},
		useUntil: resp.GetExpireTime().AsTime().Add(-o.earlyExpiry),
		headers:  resp.GetHeaders(),
	}
	ct.authValue = ct.token.Type() + " " + ct.token.AccessToken
	if base := resp.GetApiBaseUrl(); base != "" {
		if ct.apiBase, err = url.Parse(base); err != nil {
			return nil, fmt.Errorf("credbroker returned an unusable api_base_url: %w", err)
		}
	}
	ts.current.Store(ct)
	return ct, nil
}

// RoundTripper returns an http.RoundTripper for the named account's API.
// It sets Authorization and the account's headers (such as x-org-id), and
// turns a request for a relative URL such as "/v2/systemgroups" into one
// for the account's API base URL. It refuses to send the token to any other
// host. base carries the requests; nil means http.DefaultTransport.
func (c *Client) RoundTripper(name string, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &roundTripper{source: c.source(name), base: base}
}

type roundTripper struct {
	source *tokenSource
	base   http.RoundTripper
}

// ErrForeignHost is returned for a request to a host other than the
// account's API, which must not receive the account's token.
var ErrForeignHost = errors.New("credbroker client: refusing to send the account's token to a host other than its API base URL")

func (rt *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	ct, err := rt.source.cached()
	if err != nil {
		closeBody(req)
		return nil, err
	}
	out := req.Clone(req.Context())
	switch {
	case ct.apiBase == nil:
		if !req.URL.IsAbs() {
			closeBody(req)
			return nil, errors.New("credbroker client: the account has no API base URL, so request URLs must be absolute")
		}
	case !req.URL.IsAbs():
		u := *ct.apiBase
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + strings.TrimPrefix(req.URL.Path, "/")
		u.RawPath = ""
		u.RawQuery = req.URL.RawQuery
		out.URL, out.Host = &u, ""
	case req.URL.Scheme != ct.apiBase.Scheme || req.URL.Host != ct.apiBase.Host:
		closeBody(req)
		return nil, ErrForeignHost
	}
	out.Header.Set("Authorization", ct.authValue)
	for k, v := range ct.headers {
		out.Header.Set(k, v)
	}
	return rt.base.RoundTrip(out)
}

// closeBody honours the RoundTripper contract of closing the body on error.
func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
