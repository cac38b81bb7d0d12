package gate

import (
	"context"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/mtls"
)

// UnaryInterceptor is the gate of unary gRPC calls: a call to an open
// method passes; any other is admitted (or refused), handled, audited and
// logged.
func (g *Gate) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	a := methodAccess[info.FullMethod]
	if a == Open {
		return handler(ctx, req)
	}
	c := g.begin(info.FullMethod, peerAddress(ctx), a)
	c.Resource = requestResource(req)
	var resp any
	err := g.admit(c, authorizationHeader(ctx), grpcCertificate(ctx))
	if err == nil {
		resp, err = handler(WithCall(ctx, c), req)
	}
	if err = g.Finish(c, err); err != nil {
		return nil, err
	}
	return resp, nil
}

// StreamInterceptor admits streaming calls: server reflection and health
// watches, which are open, and Backup, which is audited like a unary call.
func (g *Gate) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	a := methodAccess[info.FullMethod]
	if a == Open {
		return handler(srv, ss)
	}
	ctx := ss.Context()
	c := g.begin(info.FullMethod, peerAddress(ctx), a)
	err := g.admit(c, authorizationHeader(ctx), grpcCertificate(ctx))
	if err == nil {
		err = handler(srv, &callStream{ServerStream: ss, ctx: WithCall(ctx, c)})
	}
	return g.Finish(c, err)
}

// callStream is a stream whose context carries the gate's call.
type callStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callStream) Context() context.Context { return s.ctx }

// peerAddress is a gRPC call's peer address, or "".
func peerAddress(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// authorizationHeader is a gRPC call's "authorization" metadata, or "".
func authorizationHeader(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) > 0 {
		return v[0]
	}
	return ""
}

// grpcCertificate is the client certificate of a gRPC call's connection.
func grpcCertificate(ctx context.Context) certificatePrincipal {
	return func(now time.Time) (string, error) { return mtls.Principal(ctx, now) }
}

// requestResource is what a request is about, for the audit events of
// calls refused before their handler ran.
func requestResource(req any) string {
	return Truncate(requestName(req), MaxAuditResource)
}

func requestName(req any) string {
	switch r := req.(type) {
	case interface{ GetName() string }:
		return r.GetName()
	case *credbrokerv1.UpdateAccountRequest:
		return r.GetAccount().GetName()
	case *credbrokerv1.CreateAccountRequest:
		if r.GetAccountId() != "" {
			return audit.AccountName(r.GetAccountId())
		}
	case *credbrokerv1.CreateCallerKeyRequest:
		if r.GetKeyId() != "" {
			return callers.KeyPrincipalPrefix + r.GetKeyId()
		}
	case *credbrokerv1.AddAdminPrincipalRequest:
		return AdminPrincipalPrefix + r.GetPrincipal()
	case *credbrokerv1.RemoveAdminPrincipalRequest:
		return AdminPrincipalPrefix + r.GetPrincipal()
	}
	return ""
}

// UnaryInterceptors are the gate of unary calls with panics recovered
// inside it, so that their calls are audited, and outside it, so that the
// gate itself cannot crash a call.
func (g *Gate) UnaryInterceptors() []grpc.UnaryServerInterceptor {
	recoverPanics := recovery.UnaryServerInterceptor(g.onPanic())
	return []grpc.UnaryServerInterceptor{recoverPanics, g.UnaryInterceptor, recoverPanics}
}

// StreamInterceptors are StreamInterceptor with panics recovered as in
// UnaryInterceptors.
func (g *Gate) StreamInterceptors() []grpc.StreamServerInterceptor {
	recoverPanics := recovery.StreamServerInterceptor(g.onPanic())
	return []grpc.StreamServerInterceptor{recoverPanics, g.StreamInterceptor, recoverPanics}
}

// onPanic logs a handler's panic and ends its call with a generic INTERNAL.
func (g *Gate) onPanic() recovery.Option {
	return recovery.WithRecoveryHandlerContext(func(ctx context.Context, _ any) error {
		method, _ := grpc.Method(ctx)
		g.log.Error("panic in handler", "method", method)
		return status.Error(codes.Internal, "internal error")
	})
}
