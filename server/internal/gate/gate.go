// Package gate decides who may call what, for every listener the broker
// serves: which methods are open, need a proven identity, a caller or an
// admin (methodAccess, default deny); authentication by caller key or
// client certificate; each caller's rate limit and each peer address's
// budget of calls without valid credentials; and the audit event and log
// line of every call. gRPC reaches it through UnaryInterceptor and
// StreamInterceptor, HTTP handlers (the egress proxy, and any later
// listener) through Authorize; each ends its call with Finish or
// FinishAnswered. Handlers find the admitted call with CallFrom.
package gate

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/ratelimit"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Config tunes the gate. Zero fields take the values of DefaultConfig.
type Config struct {
	// RateLimit is each caller's sustained calls per second and RateBurst
	// the calls it may make at once; a negative RateLimit turns limiting off.
	RateLimit float64
	RateBurst int
	// UnauthenticatedRateLimit is the sustained calls per second that fail
	// authentication (no, unknown, revoked or expired credentials) which
	// each peer address may make, and UnauthenticatedRateBurst how many at
	// once. A peer beyond it gets RESOURCE_EXHAUSTED before its credentials
	// are looked at, valid ones too, until its budget refills. A negative
	// UnauthenticatedRateLimit turns this off.
	UnauthenticatedRateLimit float64
	UnauthenticatedRateBurst int
	// RefusalInterval is how often the tallies of refused calls become
	// audit events (see refusals).
	RefusalInterval time.Duration
	// Unavailable, if set, says why this replica cannot serve now (its
	// storage is out of reach, its copies lag behind it, it lacks the
	// database's master key): the error every call is refused with at
	// once, unaudited (there may be nowhere to write its event) but
	// logged; nil while it can serve.
	Unavailable func() error

	// Now is the clock of calls' times and rate limits.
	Now    func() time.Time
	Logger *slog.Logger
}

// DefaultConfig: 100 calls a second per caller, bursts of 200; one call
// without valid credentials a second per peer address, bursts of 20, so
// that a client with a typo sees its UNAUTHENTICATED answers and a flood is
// throttled.
func DefaultConfig() Config {
	return Config{
		RateLimit: 100, RateBurst: 200,
		UnauthenticatedRateLimit: 1, UnauthenticatedRateBurst: 20,
		RefusalInterval: time.Minute,
		Now:             time.Now,
		Logger:          slog.Default(),
	}
}

// withDefaults fills the unset fields: zero ones, and negative bursts and
// intervals (a negative rate turns limiting off).
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.RateLimit = cmp.Or(c.RateLimit, d.RateLimit)
	c.UnauthenticatedRateLimit = cmp.Or(c.UnauthenticatedRateLimit, d.UnauthenticatedRateLimit)
	c.RateBurst = positiveOr(c.RateBurst, d.RateBurst)
	c.UnauthenticatedRateBurst = positiveOr(c.UnauthenticatedRateBurst, d.UnauthenticatedRateBurst)
	c.RefusalInterval = positiveOr(c.RefusalInterval, d.RefusalInterval)
	if c.Now == nil {
		c.Now = d.Now
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	return c
}

// positiveOr is v if it is positive, else def.
func positiveOr[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// AdminPrincipalPrefix names admin principals in audit events.
const AdminPrincipalPrefix = "adminPrincipals/"

// Access is who may call a method.
type Access int

const (
	// Denied: any method not listed in methodAccess (default deny).
	Denied Access = iota
	// Open: no identity needed: health checks (for load balancers), and
	// server reflection (the API's schema, public in the repository; with
	// it, grpcurl reaches the health check, and a call without an identity
	// gets its own refusal, not a reflection error).
	Open
	// Caller: any proven identity, audited; the handler checks the
	// account's grants itself.
	Caller
	// Admin: the admin role, audited.
	Admin
)

// methodAccess lists every gRPC method the server serves and who may call it.
var methodAccess = func() map[string]Access {
	m := map[string]Access{}
	add := func(sd grpc.ServiceDesc, a Access) {
		for _, md := range sd.Methods {
			m["/"+sd.ServiceName+"/"+md.MethodName] = a
		}
		for _, sd2 := range sd.Streams {
			m["/"+sd.ServiceName+"/"+sd2.StreamName] = a
		}
	}
	add(credbrokerv1.TokenService_ServiceDesc, Caller)
	add(credbrokerv1.AccountService_ServiceDesc, Admin)
	add(credbrokerv1.CallerService_ServiceDesc, Admin)
	add(credbrokerv1.AuditService_ServiceDesc, Admin)
	add(credbrokerv1.BackupService_ServiceDesc, Admin)
	add(credbrokerv1.MasterKeyService_ServiceDesc, Admin)
	add(credbrokerv1.ConnectService_ServiceDesc, Admin)
	add(credbrokerv1.EventService_ServiceDesc, Caller)
	add(credbrokerv1.WebhookService_ServiceDesc, Admin)
	add(healthpb.Health_ServiceDesc, Open)
	m["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"] = Open
	m["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] = Open
	return m
}()

// Gate authenticates, rate-limits and authorizes every call, and writes
// the audit event of every audited call before its answer leaves.
type Gate struct {
	callers *callers.Service
	limiter *ratelimit.Limiter
	audit   *audit.Log
	log     *slog.Logger
	now     func() time.Time
	// certs proves the principals of HTTP callers' client certificates.
	certs *mtls.HTTPVerifier
	// refusals bounds and tallies the calls that fail authentication.
	refusals    *refusals
	unavailable func() error
}

// New returns the gate of callers' keys and admin principals cs, writing
// to the audit trail al. certs verifies the client certificates of HTTP
// calls: the HTTP servers' ConnContext must be its ConnContext.
func New(cfg Config, cs *callers.Service, al *audit.Log, certs *mtls.HTTPVerifier) *Gate {
	cfg = cfg.withDefaults()
	if cfg.Unavailable == nil {
		cfg.Unavailable = func() error { return nil }
	}
	return &Gate{
		callers: cs, limiter: ratelimit.New(cfg.RateLimit, cfg.RateBurst), audit: al, log: cfg.Logger, now: cfg.Now, certs: certs,
		refusals:    newRefusals(cfg.UnauthenticatedRateLimit, cfg.UnauthenticatedRateBurst, cfg.RefusalInterval, al, cfg.Logger, cfg.Now),
		unavailable: cfg.Unavailable,
	}
}

// Run writes the tallies of refused calls as audit events every
// RefusalInterval, and once more when ctx ends: stop it after the
// listeners and before the audit writer.
func (g *Gate) Run(ctx context.Context) { g.refusals.run(ctx) }

// Call is what the gate learned about a call; handlers add the resource
// and, for issued tokens, the fingerprint.
type Call struct {
	Method, Principal, Peer string
	Time                    time.Time
	// started times the call for the request log (Time may be a test's clock).
	started                       time.Time
	Resource, Fingerprint, Detail string
	// committed: the call's change was committed together with its audit
	// event (see ChangeEvent), so the gate does not record it again.
	committed atomic.Bool
	// Proxy describes an egress-proxy call.
	Proxy *store.ProxyCall
	// unproven: the call was refused before its caller proved an identity,
	// so it is tallied (refusals), not audited alone; throttled: by its
	// peer address's budget, so it is not logged alone either.
	unproven, throttled bool
	// Refused: the proven caller's call was refused before it did anything
	// (no grant, not an admin, over its rate limit): audited alone within
	// the caller's allowance, tallied beyond it (see refusals).
	Refused bool
	// unaudited: refused while the storage was out of reach.
	unaudited bool
	// budget names the peer's budget of failed credentials the call draws
	// on, if not the peer's own ("" ): connect links have one apart, so
	// that anyone guessing links from an address (a load balancer's, say)
	// does not lock out the admins behind it.
	budget string
	// access is who may make the call.
	access Access
}

type callKey struct{}

// CallFrom returns the call the gate admitted. Every handler runs behind
// the gate, so a call without one is a wiring bug: it panics (and the
// panic is recovered as an INTERNAL error) rather than go unaudited.
func CallFrom(ctx context.Context) *Call {
	c, _ := ctx.Value(callKey{}).(*Call)
	if c == nil {
		panic("gate: a call that did not pass the gate")
	}
	return c
}

// WithCall is ctx carrying call c, for handlers called in-process (the
// Hub calls the API's handlers with the call it admitted).
func WithCall(ctx context.Context, c *Call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// Event is the call's audit event with the given outcome.
func (c *Call) Event(code codes.Code) store.AuditEvent {
	return store.AuditEvent{
		Time: c.Time, Principal: c.Principal, Method: c.Method, Resource: c.Resource,
		Code: grpcerr.CodeName(code), TokenFingerprint: c.Fingerprint, Detail: c.Detail, PeerAddress: c.Peer,
		Proxy: c.Proxy,
	}
}

// ChangeEvent is the audit event of a change about to be stored with it.
// If the store commits it, the call is recorded: the gate writes no
// second event. If it does not (the change failed, or changed nothing),
// the gate records the call when it ends, with its outcome.
func (c *Call) ChangeEvent(resource, detail string) store.AuditEvent {
	c.Resource, c.Detail = resource, detail
	ev := c.Event(codes.OK)
	ev.OnCommit = func() { c.committed.Store(true) }
	return ev
}

// begin starts a call to method, which needs access a, from peer.
func (g *Gate) begin(method, peer string, a Access) *Call {
	return &Call{Method: method, Time: g.now(), started: time.Now(), Peer: peer, access: a}
}

// Finish ends call c, which ended with err, before its answer leaves: it
// writes its audit event (or tallies it, see record) and logs it. It
// returns the error the call must end with: ErrAuditUnavailable (or
// ErrStorageUnavailable) if the event could not be written.
func (g *Gate) Finish(c *Call, err error) error {
	if rerr := g.record(c, err); rerr != nil {
		err = rerr
	}
	g.logRequest(c, status.Code(err))
	return err
}

// FinishAnswered ends call c, which ended with err, once its answer has
// been passed on but for its end (the egress proxy streams the API's
// answer as it comes, and holds back its last byte): it writes its audit
// event and logs the call with the code its caller got. It returns
// ErrAuditUnavailable if the event could not be written: the handler
// then cuts the answer off.
func (g *Gate) FinishAnswered(c *Call, err error) error {
	aerr := g.record(c, err)
	g.logRequest(c, status.Code(err))
	return aerr
}

// record writes the audit event of call c, which ended with err, unless
// the handler wrote it already and succeeded; or tallies it if it was
// refused before its caller proved an identity (see refusals). It returns ErrStorageUnavailable if the
// storage is out of reach, or else ErrAuditUnavailable, if the event
// could not be written.
func (g *Gate) record(c *Call, err error) error {
	if c.unaudited || (c.committed.Load() && err == nil) {
		return nil
	}
	if c.unproven || (c.Refused && !g.refusals.aloneAllowed(c)) {
		c.throttled = c.throttled || c.Refused // its tally is logged instead
		g.refusals.add(c, status.Code(err))
		return nil
	}
	if err := g.audit.Record(c.Event(status.Code(err))); errors.Is(err, store.ErrUnavailable) {
		return ErrStorageUnavailable
	} else if err != nil {
		return ErrAuditUnavailable
	}
	return nil
}

// logRequest writes the one log line of each authenticated call: who, what,
// on which account, how it ended and how long it took. It holds what the
// audit event holds (never a secret) plus the latency.
func (g *Gate) logRequest(c *Call, code codes.Code) {
	if c.throttled || !g.log.Enabled(context.Background(), slog.LevelInfo) {
		return // spare the busiest paths building a line nobody reads
	}
	// The record is made here rather than by Logger.LogAttrs, which looks
	// up its caller's program counter for every line (nothing here logs
	// it): 1.5% of a GetToken's CPU.
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
	r.AddAttrs(slog.String("principal", c.Principal), slog.String("method", c.Method), slog.String("account", c.Resource),
		slog.String("code", grpcerr.CodeName(code)), slog.Float64("latency_ms", float64(time.Since(c.started).Microseconds())/1000), slog.String("peer", c.Peer))
	if c.Fingerprint != "" {
		r.AddAttrs(slog.String("token_fingerprint", c.Fingerprint))
	}
	if c.Detail != "" {
		r.AddAttrs(slog.String("detail", c.Detail))
	}
	if p := c.Proxy; p != nil {
		r.AddAttrs(slog.Group("proxy", "http_method", p.HTTPMethod, "path", p.Path, "status", p.Status,
			"request_bytes", p.RequestBytes, "response_bytes", p.ResponseBytes))
	}
	_ = g.log.Handler().Handle(context.Background(), r) // as Logger does, a line that cannot be written is not the call's failure
}

// ErrStorageUnavailable refuses every call while the storage is out of
// reach, and answers a call that met it, so that clients retry on another
// replica.
var ErrStorageUnavailable = grpcerr.Status(codes.Unavailable, "this replica cannot reach its storage (a quorum of etcd), or has not caught up with it, so it can neither audit nor serve this call; retry, on another replica",
	grpcerr.Info(credbrokerv1.ErrorReason_STORAGE_UNAVAILABLE, nil)).Err()

// ErrMasterKeyMissing refuses every call while the database is under a
// master key this replica does not hold (another replica rotated it).
var ErrMasterKeyMissing = grpcerr.Status(codes.Unavailable, "this replica does not hold the master key the database was moved to, so it cannot read what is stored under it; retry, on another replica",
	grpcerr.Info(credbrokerv1.ErrorReason_MASTER_KEY_MISSING, nil)).Err()

// ErrAuditUnavailable refuses a call whose audit event could not be written.
var ErrAuditUnavailable = grpcerr.Status(codes.Unavailable, "the audit event of this call could not be written, so the call was refused; see the server log",
	grpcerr.Info(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, nil)).Err()

// admit proves the caller's identity (its caller key, sent as "Bearer
// <key>" in keyHeader, else its client certificate) and checks its rate
// limit and role. A peer address that sent too many calls without valid
// credentials waits before any of its credentials are looked at.
func (g *Gate) admit(c *Call, keyHeader string, cert certificatePrincipal) error {
	return g.admitAs(c, func() (callers.Identity, error) { return g.authenticate(keyHeader, cert, c.Time) })
}

// admitAs is admit, with the identity that authenticate proves.
func (g *Gate) admitAs(c *Call, authenticate func() (callers.Identity, error)) error {
	if err := g.unavailable(); err != nil {
		c.unaudited = true
		return err
	}
	if wait := g.refusals.wait(c); wait > 0 {
		c.unproven, c.throttled = true, true
		return grpcerr.Status(codes.ResourceExhausted, "too many calls without valid credentials from this address; retry later",
			grpcerr.Info(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
			grpcerr.Retry(wait)).Err()
	}
	id, err := authenticate()
	c.Principal = id.Principal // a revoked or expired key is still named
	if err != nil {
		c.unproven = true
		g.refusals.charge(c)
		return err
	}
	if ok, wait := g.limiter.Allow(id.Principal, c.Time); !ok {
		c.Refused = true
		return grpcerr.Status(codes.ResourceExhausted, "rate limit exceeded for "+id.Principal,
			grpcerr.Info(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
			grpcerr.Retry(wait)).Err()
	}
	switch {
	case c.access == Denied:
		c.Refused = true
		return status.Error(codes.PermissionDenied, "this method is not open to callers")
	case c.access == Admin && !id.Admin:
		c.Refused = true
		return status.Errorf(codes.PermissionDenied, "%s needs the admin role, which %s does not have", c.Method, id.Principal)
	}
	return nil
}

// certificatePrincipal returns the principal of the caller's client
// certificate at a time, or mtls.ErrNoCertificate.
type certificatePrincipal func(now time.Time) (string, error)

// authenticate returns the caller's identity: its caller key if it sends
// one, else its client certificate.
func (g *Gate) authenticate(keyHeader string, cert certificatePrincipal, now time.Time) (callers.Identity, error) {
	if keyHeader != "" {
		scheme, key, ok := strings.Cut(keyHeader, " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			return callers.Identity{}, status.Error(codes.Unauthenticated, `the caller key must be sent as "Bearer <caller key>"`)
		}
		id, err := g.callers.AuthenticateKey(strings.TrimSpace(key))
		if err != nil {
			return id, status.Error(codes.Unauthenticated, err.Error())
		}
		return id, nil
	}
	principal, err := cert(now)
	switch {
	case errors.Is(err, mtls.ErrNoCertificate):
		return callers.Identity{}, status.Error(codes.Unauthenticated, `no credentials: send "authorization: Bearer <caller key>" (on the egress proxy, "Proxy-Authorization: Bearer <caller key>") or a client certificate signed by the broker's client CA`)
	case err != nil:
		return callers.Identity{}, status.Error(codes.Unauthenticated, err.Error())
	case strings.HasPrefix(principal, callers.KeyPrincipalPrefix):
		return callers.Identity{}, status.Errorf(codes.Unauthenticated, "a certificate principal may not start with %q, which names caller keys", callers.KeyPrincipalPrefix)
	}
	return g.callers.CertificateIdentity(principal), nil
}

// MaxAuditResource bounds what a request can make the broker store: names
// from refused calls are unvalidated input.
const MaxAuditResource = 256

// Truncate bounds a string from a caller before the broker stores it.
func Truncate(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "..."
	}
	return s
}
