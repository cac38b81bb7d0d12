// Package proxy forwards callers' HTTP requests to an account's API with
// the account's credentials injected, so that the credentials themselves
// never leave the broker. It is not an open proxy: a request can only reach
// the account's own API base URL, redirects are passed back rather than
// followed, the caller's own credentials and hop-by-hop headers are
// stripped, bodies are bounded both ways, and answers lose any header that
// echoes the injected credential, and their trailers.
//
// Authentication, grants and the audit trail are the caller's (package
// server) business; this package only parses the path and forwards.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// Errors a Forward can end with before anything was written.
var (
	// ErrBadPath: the path is not /v1/accounts/{account_id}/proxy/{path}, or
	// {path} has a dot segment, an empty segment or an encoded slash.
	ErrBadPath = &grpcerr.FieldError{Field: "path", Problem: `the path must be /v1/accounts/{account_id}/proxy/{path}, where {path} has no "." or ".." segments, no empty segments and no encoded "/" or "\"`}
	// ErrMethod: the proxy forwards the methods of a REST API only.
	ErrMethod = &grpcerr.FieldError{Field: "method", Problem: "the egress proxy forwards GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS only"}
	// ErrNoAPIBase: the account has no API base URL to forward to.
	ErrNoAPIBase = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_NO_API_BASE_URL,
		"the account has no api_base_url, so the egress proxy has nowhere to forward its calls")
	// ErrAnswerBroken: the API's connection broke while its answer was
	// being passed on (a Call.Aborted).
	ErrAnswerBroken = grpcerr.WithReason(codes.Unavailable, credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, "the account's API broke off its answer")
)

// TooLargeError means a body exceeded its bound.
type TooLargeError struct {
	What  string // "request" or "response"
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("the %s body is larger than the egress proxy's limit of %d bytes", e.What, e.Limit)
}

// GRPCStatus is RESOURCE_EXHAUSTED.
func (e *TooLargeError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, e.Error())
}

// UpstreamError means the API could not be reached or failed to answer.
type UpstreamError struct{ Err error }

func (e *UpstreamError) Error() string {
	if e.Timeout() {
		return "the account's API did not answer in time"
	}
	return "the account's API could not be reached"
}

// Timeout reports whether the API was too slow rather than unreachable.
func (e *UpstreamError) Timeout() bool {
	var netErr net.Error
	return errors.Is(e.Err, context.DeadlineExceeded) || (errors.As(e.Err, &netErr) && netErr.Timeout())
}
func (e *UpstreamError) Unwrap() error { return e.Err }

// GRPCStatus is UNAVAILABLE.
func (e *UpstreamError) GRPCStatus() *status.Status {
	return grpcerr.Status(codes.Unavailable, e.Error(), grpcerr.Info(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil))
}

// pathPrefix starts every proxy path.
const pathPrefix = "/v1/accounts/"

// ParsePath splits an escaped request path into the account id and the
// escaped upstream path below the account's API base URL (starting with
// "/"). It refuses anything that could climb out of that base: "." and ".."
// segments (also percent-encoded), empty segments, and encoded "/" or "\".
// The account id is not validated here. A path refused for its segments
// still comes back with its parts, for the refusal's audit event.
func ParsePath(escaped string) (accountID, upstreamPath string, err error) {
	rest, ok := strings.CutPrefix(escaped, pathPrefix)
	if !ok {
		return "", "", ErrBadPath
	}
	accountID, rest, ok = strings.Cut(rest, "/proxy/")
	if !ok || accountID == "" || strings.Contains(accountID, "/") || rest == "" {
		return "", "", ErrBadPath
	}
	for _, seg := range strings.Split(rest, "/") {
		dec, err := url.PathUnescape(seg)
		if err != nil || dec == "" || dec == "." || dec == ".." || strings.ContainsAny(dec, `/\`) {
			return accountID, "/" + rest, ErrBadPath // named in the refusal's audit event
		}
	}
	return accountID, "/" + rest, nil
}

// Config bounds the proxy. Zero values take the defaults.
type Config struct {
	// MaxRequestBytes bounds a request body. Default 10 MiB.
	MaxRequestBytes int64
	// MaxResponseBytes bounds a response body; a longer one is cut off and
	// the caller's connection aborted, so it cannot mistake it for whole.
	// Default 64 MiB.
	MaxResponseBytes int64
	// Timeout bounds the wait for the API's response headers. Default 60s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Defaults for Config.
const (
	DefaultMaxRequestBytes  = 10 << 20
	DefaultMaxResponseBytes = 64 << 20
	DefaultTimeout          = time.Minute
)

// DefaultConfig is the configuration New uses for zero fields.
func DefaultConfig() Config {
	return Config{
		MaxRequestBytes: DefaultMaxRequestBytes, MaxResponseBytes: DefaultMaxResponseBytes,
		Timeout: DefaultTimeout, Logger: slog.Default(),
	}
}

// replayLimit: request bodies up to this size are held in memory, so that
// a call whose token is rejected can be sent again with a new one.
const replayLimit = 1 << 20

// Credentials are the accounts' credentials (a *tokens.Manager).
type Credentials interface {
	Credential(ctx context.Context, accountID string) (*tokens.Issued, error)
	Invalidate(accountID string, is *tokens.Issued) bool
	APIKeyAnswered(accountID string, httpStatus int)
}

// Forwarder forwards calls. It is safe for concurrent use.
type Forwarder struct {
	cfg   Config
	creds Credentials
	rp    *httputil.ReverseProxy
}

// New returns a Forwarder that sends calls over its own HTTP transport.
func New(cfg Config, creds Credentials) *Forwarder {
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = nil // the broker talks to the API itself, not via the environment's proxy
	base.ResponseHeaderTimeout = cfg.Timeout
	base.MaxIdleConnsPerHost = 256
	f := &Forwarder{cfg: cfg, creds: creds}
	f.rp = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      &credentialTransport{base: base, creds: creds},
		ModifyResponse: f.checkResponse,
		ErrorHandler:   func(_ http.ResponseWriter, r *http.Request, err error) { callOf(r.Context()).Err = err },
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		BufferPool:     &bufferPool{},
	}
	return f
}

// bufferPool reuses the buffers answers are copied through; without it
// every proxied call allocates 32 KiB for the garbage collector to clear.
type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }

// Call is one proxied call: what to forward, and what happened.
type Call struct {
	AccountID string
	// Path is the escaped upstream path below the API base URL.
	Path string

	// Status is the API's HTTP status; 0 if none came.
	Status        int
	RequestBytes  int64
	ResponseBytes int64
	// Err is set when the call failed before the API's answer was passed
	// on; nothing has been written to the caller then.
	Err error
	// Aborted says why the answer was cut off mid-way, after the API's
	// status was passed on: a *TooLargeError, ErrAnswerBroken, or
	// context.Canceled (the caller went away). The caller's connection must
	// then be aborted, so that it cannot take the answer for a whole one.
	Aborted error

	target *url.URL
	issued *tokens.Issued
	// readErr is the first error reading the API's answer failed with.
	readErr error
	// rejected is the token the API rejected (401) before the call was
	// sent again with issued; nil if it was not.
	rejected *tokens.Issued
}

type callKey struct{}

func callOf(ctx context.Context) *Call { return ctx.Value(callKey{}).(*Call) }

// Forward sends r to c's account API and streams the answer to w. On
// return, c says what happened; if c.Err is set, nothing has been written
// and the caller answers with an error itself.
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, c *Call) {
	if c.Err = f.prepare(w, r, c); c.Err != nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler { // ReverseProxy panics with this exact value
				panic(p)
			}
			c.Aborted = abortCause(r.Context(), c.readErr)
		}
	}()
	f.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
}

// abortCause says why an answer was cut off, given the error reading it
// failed with (nil if it was writing it to the caller that failed).
func abortCause(ctx context.Context, readErr error) error {
	var tooLarge *TooLargeError
	switch {
	case errors.As(readErr, &tooLarge):
		return tooLarge
	case readErr == nil || ctx.Err() != nil:
		return context.Canceled
	}
	return ErrAnswerBroken
}

// prepare checks the method and body size, gets the account's credential
// and target URL, and makes small bodies replayable.
func (f *Forwarder) prepare(w http.ResponseWriter, r *http.Request, c *Call) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
	default:
		return ErrMethod
	}
	if r.ContentLength > f.cfg.MaxRequestBytes {
		return &TooLargeError{What: "request", Limit: f.cfg.MaxRequestBytes}
	}
	is, err := f.creds.Credential(r.Context(), c.AccountID)
	if err != nil {
		return err
	}
	if is.APIBaseURL == "" {
		return ErrNoAPIBase
	}
	if err := provider.CheckEndpointURL(is.APIBaseURL); err != nil { // checked when linked; checked again as used
		return fmt.Errorf("account %s: %w: the API base URL %s", c.AccountID, provider.ErrEndpointRefused, err)
	}
	base, err := url.Parse(is.APIBaseURL)
	if err != nil {
		return fmt.Errorf("account %s: api base url: %w", c.AccountID, err)
	}
	c.issued, c.target = is, joinPath(base, c.Path)

	switch {
	case r.ContentLength == 0:
		return nil // ReverseProxy sends no body
	case r.ContentLength > 0 && r.ContentLength <= replayLimit:
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return &UpstreamError{Err: fmt.Errorf("reading the request body: %w", err)}
		}
		r.Body = io.NopCloser(bytes.NewReader(buf))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	default:
		r.Body = http.MaxBytesReader(w, r.Body, f.cfg.MaxRequestBytes)
	}
	r.Body = &countingBody{ReadCloser: r.Body, n: &c.RequestBytes}
	return nil
}

// joinPath puts an escaped path below base's path; the host is base's.
func joinPath(base *url.URL, escaped string) *url.URL {
	u := *base
	u.RawQuery, u.Fragment = "", ""
	u.RawPath = strings.TrimSuffix(base.EscapedPath(), "/") + escaped
	u.Path, _ = url.PathUnescape(u.RawPath) // ParsePath checked the escapes
	return &u
}

// strippedHeaders are request headers that must not reach the API: the
// caller's own credentials (the broker sets the account's) and forwarding
// details. ReverseProxy strips hop-by-hop headers, Proxy-Authorization
// among them, itself.
var strippedHeaders = []string{"Authorization", "X-Api-Key", "X-Org-Id", "Cookie", "Forwarded", "Via"}

func rewrite(pr *httputil.ProxyRequest) {
	c := callOf(pr.In.Context())
	pr.Out.URL = c.target
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	pr.Out.Host = ""
	for _, h := range strippedHeaders {
		pr.Out.Header.Del(h)
	}
}

// checkResponse refuses an answer whose declared size is over the bound,
// removes the headers that echo the call's credentials, drops trailers
// and counts (and bounds) the bytes of the rest.
func (f *Forwarder) checkResponse(resp *http.Response) error {
	c := callOf(resp.Request.Context())
	c.Status = resp.StatusCode
	if resp.ContentLength > f.cfg.MaxResponseBytes {
		return &TooLargeError{What: "response", Limit: f.cfg.MaxResponseBytes}
	}
	f.removeEchoes(resp.Header, c)
	resp.Trailer = nil
	resp.Body = &trailerlessBody{
		ReadCloser: &countingBody{ReadCloser: resp.Body, n: &c.ResponseBytes, limit: f.cfg.MaxResponseBytes, err: &c.readErr},
		resp:       resp,
	}
	return nil
}

// removeEchoes removes the headers whose value holds a credential the call
// was sent with, in any form the secret Detector knows: whatever answers
// for the API must not hand the credential to the caller.
func (f *Forwarder) removeEchoes(h http.Header, c *Call) {
	echoes := []secret.Detector{c.issued.Echo()}
	if c.rejected != nil {
		echoes = append(echoes, c.rejected.Echo())
	}
	for name, values := range h {
		if slices.ContainsFunc(values, func(v string) bool {
			return slices.ContainsFunc(echoes, func(d secret.Detector) bool { return d.FoundIn(v) })
		}) {
			delete(h, name)
			f.cfg.Logger.Warn("removed a response header that echoed the account's credential", "account", c.AccountID, "header", name)
		}
	}
}

// trailerlessBody drops the answer's trailers. Their values come after the
// body, too late to check them before the caller has the rest; the
// transport fills resp.Trailer as it reads them, and ReverseProxy passes
// on what is there once it has closed the body.
type trailerlessBody struct {
	io.ReadCloser
	resp *http.Response
}

func (b *trailerlessBody) Close() error {
	err := b.ReadCloser.Close()
	b.resp.Trailer = nil
	return err
}

// credentialTransport authenticates each request with the account's
// credential and, when the API rejects a token with 401, gets a new token
// and sends the request once more if its body can be sent again.
type credentialTransport struct {
	base  http.RoundTripper
	creds Credentials
}

func (t *credentialTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := callOf(req.Context())
	resp, err := t.send(req, c.issued, req.Body)
	if err == nil && c.issued.APIKey {
		t.creds.APIKeyAnswered(c.AccountID, resp.StatusCode)
	}
	if err != nil || resp.StatusCode != http.StatusUnauthorized || c.issued.APIKey ||
		(req.Body != nil && req.Body != http.NoBody && req.GetBody == nil) ||
		!t.creds.Invalidate(c.AccountID, c.issued) {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	is, err := t.creds.Credential(req.Context(), c.AccountID)
	if err != nil {
		return nil, err
	}
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			return nil, err
		}
		c.RequestBytes = 0
		body = &countingBody{ReadCloser: body, n: &c.RequestBytes}
	}
	c.rejected, c.issued = c.issued, is
	return t.send(req, is, body)
}

func (t *credentialTransport) send(req *http.Request, is *tokens.Issued, body io.ReadCloser) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.Body = body
	is.Authorize(out.Header)
	resp, err := t.base.RoundTrip(out)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &TooLargeError{What: "request", Limit: tooLarge.Limit}
		}
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, &UpstreamError{Err: err}
	}
	return resp, nil
}

// countingBody counts the bytes read through it and, with a limit, fails
// once more than limit have been read. With err, it keeps the first error
// a read failed with.
type countingBody struct {
	io.ReadCloser
	n     *int64
	limit int64
	err   *error
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	*b.n += int64(n)
	if over := *b.n - b.limit; b.limit > 0 && over > 0 {
		*b.n = b.limit
		n, err = n-int(over), &TooLargeError{What: "response", Limit: b.limit}
	}
	if err != nil && err != io.EOF && b.err != nil && *b.err == nil {
		*b.err = err
	}
	return n, err
}
