package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/ratelimit"
	"github.com/credbroker/credbroker/server/internal/store"
)

// adminPrincipalPrefix names admin principals in audit events.
const adminPrincipalPrefix = "adminPrincipals/"

// access is who may call a method.
type access int

const (
	// denied: any method not listed below (default deny).
	denied access = iota
	// open: no identity needed (health checks for load balancers).
	open
	// proven: any proven identity; not audited (server reflection).
	proven
	// caller: any proven identity, audited; TokenService checks the
	// account's grants itself.
	caller
	// admin: the admin role, audited.
	admin
)

// methodAccess lists every method the server serves and who may call it.
var methodAccess = func() map[string]access {
	m := map[string]access{}
	add := func(sd grpc.ServiceDesc, a access) {
		for _, md := range sd.Methods {
			m["/"+sd.ServiceName+"/"+md.MethodName] = a
		}
		for _, sd2 := range sd.Streams {
			m["/"+sd.ServiceName+"/"+sd2.StreamName] = a
		}
	}
	add(credbrokerv1.TokenService_ServiceDesc, caller)
	add(credbrokerv1.AccountService_ServiceDesc, admin)
	add(credbrokerv1.CallerService_ServiceDesc, admin)
	add(credbrokerv1.AuditService_ServiceDesc, admin)
	add(credbrokerv1.BackupService_ServiceDesc, admin)
	add(healthpb.Health_ServiceDesc, open)
	m["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"] = proven
	m["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] = proven
	return m
}()

// gate authenticates, rate-limits and authorizes every call, and writes
// the audit event of every audited call before its answer leaves.
type gate struct {
	callers *callers.Service
	limiter *ratelimit.Limiter
	audit   *audit.Log
	log     *slog.Logger
	now     func() time.Time
	// refusals bounds and tallies the calls that fail authentication.
	refusals *refusals
}

// call is what the gate learned about a call; handlers add the resource
// and, for issued tokens, the fingerprint.
type call struct {
	method, principal, peer string
	time                    time.Time
	// started times the call for the request log (time may be a test's clock).
	started               time.Time
	resource, fingerprint string
	detail                string
	// written: the handler's change was stored together with its audit
	// event, so the gate does not record it again.
	written bool
	// proxy describes an egress-proxy call.
	proxy *store.ProxyCall
	// unproven: the call was refused before its caller proved an identity,
	// so it is tallied (refusals), not audited alone; throttled: by its
	// peer address's budget, so it is not logged alone either.
	unproven, throttled bool
	// refused: the proven caller's call was refused before it did anything
	// (no grant, not an admin, over its rate limit): audited alone within
	// the caller's allowance, tallied beyond it (see refusals).
	refused bool
}

type callKey struct{}

// callFrom returns the call the gate admitted; handlers always have one.
func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	if c == nil {
		return &call{}
	}
	return c
}

// event is the call's audit event with the given outcome.
func (c *call) event(code codes.Code) store.AuditEvent {
	return store.AuditEvent{
		Time: c.time, Principal: c.principal, Method: c.method, Resource: c.resource,
		Code: codeName(code), TokenFingerprint: c.fingerprint, Detail: c.detail, PeerAddress: c.peer,
		Proxy: c.proxy,
	}
}

// changeEvent is the audit event of a change about to be stored.
func (c *call) changeEvent(resource, detail string) store.AuditEvent {
	c.resource, c.detail = resource, detail
	return c.event(codes.OK)
}

func (g *gate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	a := methodAccess[info.FullMethod]
	if a == open {
		return handler(ctx, req)
	}
	c := g.newCall(ctx, info.FullMethod)
	c.resource = requestResource(req)
	var resp any
	err := g.admit(c, a, authorizationHeader(ctx), grpcCertificate(ctx))
	if err == nil {
		resp, err = handler(context.WithValue(ctx, callKey{}, c), req)
	}
	if err = g.finish(c, a, err); err != nil {
		return nil, err
	}
	return resp, nil
}

// stream admits streaming calls: server reflection and health watches,
// which are not audited, and Backup, which is audited like a unary call.
func (g *gate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	a := methodAccess[info.FullMethod]
	if a == open {
		return handler(srv, ss)
	}
	ctx := ss.Context()
	c := g.newCall(ctx, info.FullMethod)
	err := g.admit(c, a, authorizationHeader(ctx), grpcCertificate(ctx))
	if err == nil {
		err = handler(srv, &callStream{ServerStream: ss, ctx: context.WithValue(ctx, callKey{}, c)})
	}
	return g.finish(c, a, err)
}

func (g *gate) newCall(ctx context.Context, method string) *call {
	c := &call{method: method, time: g.now(), started: time.Now()}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.peer = p.Addr.String()
	}
	return c
}

// finish audits call c (unless its access is only "proven"), logs it, and
// returns the error it ends with.
func (g *gate) finish(c *call, a access, err error) error {
	if a != proven {
		if aerr := g.record(c, err); aerr != nil {
			err = aerr
		}
	}
	g.logRequest(c, status.Code(err))
	return err
}

// callStream is a stream whose context carries the gate's call.
type callStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callStream) Context() context.Context { return s.ctx }

// record writes the audit event of call c, which ended with err, unless
// the handler wrote it already and succeeded, or tallies it if it was
// refused before its caller proved an identity (see refusals). It returns
// the status the call must end with if the event could not be written.
func (g *gate) record(c *call, err error) error {
	if c.written && err == nil {
		return nil
	}
	if c.unproven || (c.refused && !g.refusals.aloneAllowed(c)) {
		c.throttled = c.throttled || c.refused // its tally is logged instead
		g.refusals.add(c, status.Code(err))
		return nil
	}
	if g.audit.Record(c.event(status.Code(err))) != nil {
		return errAuditUnavailable
	}
	return nil
}

// logRequest writes the one log line of each authenticated call: who, what,
// on which account, how it ended and how long it took. It holds what the
// audit event holds (never a secret) plus the latency.
func (g *gate) logRequest(c *call, code codes.Code) {
	if c.throttled || !g.log.Enabled(context.Background(), slog.LevelInfo) {
		return // spare the busiest paths building a line nobody reads
	}
	attrs := []any{"principal", c.principal, "method", c.method, "account", c.resource, "code", codeName(code),
		"latency_ms", float64(time.Since(c.started).Microseconds()) / 1000, "peer", c.peer}
	if c.fingerprint != "" {
		attrs = append(attrs, "token_fingerprint", c.fingerprint)
	}
	if c.detail != "" {
		attrs = append(attrs, "detail", c.detail)
	}
	if p := c.proxy; p != nil {
		attrs = append(attrs, slog.Group("proxy", "http_method", p.HTTPMethod, "path", p.Path, "status", p.Status,
			"request_bytes", p.RequestBytes, "response_bytes", p.ResponseBytes))
	}
	g.log.Info("request", attrs...)
}

// errAuditUnavailable refuses a call whose audit event could not be written.
var errAuditUnavailable = withDetails(codes.Unavailable, "the audit event of this call could not be written, so the call was refused; see the server log",
	errorInfo(credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE, nil))

// admit proves the caller's identity (its caller key, sent as "Bearer
// <key>" in keyHeader, else its client certificate) and checks its rate
// limit and role. A peer address that sent too many calls without valid
// credentials waits before any of its credentials are looked at.
func (g *gate) admit(c *call, a access, keyHeader string, cert certificatePrincipal) error {
	if wait := g.refusals.wait(c); wait > 0 {
		c.unproven, c.throttled = true, true
		return withDetails(codes.ResourceExhausted, "too many calls without valid credentials from this address; retry later",
			errorInfo(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)})
	}
	id, err := g.authenticate(keyHeader, cert, c.time)
	c.principal = id.Principal // a revoked or expired key is still named
	if err != nil {
		c.unproven = true
		g.refusals.charge(c)
		return err
	}
	if ok, wait := g.limiter.Allow(id.Principal, c.time); !ok {
		c.refused = true
		return withDetails(codes.ResourceExhausted, "rate limit exceeded for "+id.Principal,
			errorInfo(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)})
	}
	switch {
	case a == denied:
		c.refused = true
		return status.Error(codes.PermissionDenied, "this method is not open to callers")
	case a == admin && !id.Admin:
		c.refused = true
		return status.Errorf(codes.PermissionDenied, "%s needs the admin role, which %s does not have", c.method, id.Principal)
	}
	return nil
}

// certificatePrincipal returns the principal of the caller's client
// certificate at a time, or mtls.ErrNoCertificate.
type certificatePrincipal func(now time.Time) (string, error)

// authorizationHeader is a gRPC call's "authorization" metadata, or "".
func authorizationHeader(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		return v[0]
	}
	return ""
}

// grpcCertificate is the client certificate of a gRPC call's connection.
func grpcCertificate(ctx context.Context) certificatePrincipal {
	return func(now time.Time) (string, error) { return mtls.Principal(ctx, now) }
}

// authenticate returns the caller's identity: its caller key if it sends
// one, else its client certificate.
func (g *gate) authenticate(keyHeader string, cert certificatePrincipal, now time.Time) (callers.Identity, error) {
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

// maxAuditResource bounds what a request can make the broker store: names
// from refused calls are unvalidated input.
const maxAuditResource = 256

// requestResource is what a request is about, for the audit events of
// calls refused before their handler ran.
func requestResource(req any) string {
	return truncate(requestName(req), maxAuditResource)
}

// truncate bounds a string from a caller before the broker stores it.
func truncate(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "..."
	}
	return s
}

func requestName(req any) string {
	switch r := req.(type) {
	case interface{ GetName() string }:
		return r.GetName()
	case *credbrokerv1.UpdateAccountRequest:
		return r.GetAccount().GetName()
	case *credbrokerv1.CreateAccountRequest:
		if r.GetAccountId() != "" {
			return accountPrefix + r.GetAccountId()
		}
	case *credbrokerv1.CreateCallerKeyRequest:
		if r.GetKeyId() != "" {
			return callers.KeyPrincipalPrefix + r.GetKeyId()
		}
	case *credbrokerv1.AddAdminPrincipalRequest:
		return adminPrincipalPrefix + r.GetPrincipal()
	case *credbrokerv1.RemoveAdminPrincipalRequest:
		return adminPrincipalPrefix + r.GetPrincipal()
	}
	return ""
}

// codeNames are the canonical names of status codes, as in google.rpc.Code.
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

func codeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return c.String()
}
