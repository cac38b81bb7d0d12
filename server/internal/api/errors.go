package api

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// errorMapper turns every error a handler meets into a status, in one place.
// Unexpected errors are logged here and reach the caller only as a generic
// INTERNAL, so no detail of the broker's insides (or a secret) leaks.
type errorMapper struct{ log *slog.Logger }

// StatusOf is the status callers see of err, as the gRPC services map it
// (for the Hub's pages): unexpected errors are logged to log and become a
// generic INTERNAL.
func StatusOf(ctx context.Context, log *slog.Logger, err error) error {
	return errorMapper{log: log}.toStatus(ctx, err)
}

func (m errorMapper) toStatus(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the call's deadline passed")
	case errors.Is(err, store.ErrUnavailable):
		m.log.Warn("the storage is out of reach", "method", methodName(ctx), "error", err)
		return gate.ErrStorageUnavailable
	case errors.Is(err, store.ErrMasterKeyMissing):
		return gate.ErrMasterKeyMissing
	case errors.Is(err, store.ErrRotationBlocked):
		return grpcerr.Status(codes.FailedPrecondition, err.Error(),
			grpcerr.Info(credbrokerv1.ErrorReason_MASTER_KEY_ROTATION_BLOCKED, nil)).Err()
	case errors.Is(err, store.ErrIntegrity):
		return grpcerr.Status(codes.FailedPrecondition, "a stored record of this resource failed its integrity check (it was changed outside the broker), so the broker does not use it: delete and re-create it, or restore a backup",
			grpcerr.Info(credbrokerv1.ErrorReason_INTEGRITY_CHECK_FAILED, nil)).Err()
	}
	if st, ok := status.FromError(err); ok {
		return st.Err() // a status from validation, or an error that describes itself (see grpcerr)
	}
	m.log.Error("internal error", "method", methodName(ctx), "error", err)
	return status.Error(codes.Internal, "internal error")
}

// toCallerStatus is toStatus for callers of GetToken and the egress proxy:
// of a provider's rejection they see the OAuth2 `error` code only, since
// its description may hold anything; admins see it in GetAccount.
func (m errorMapper) toCallerStatus(ctx context.Context, err error) error {
	var rejected *provider.RejectedError
	var revoked *tokens.RefreshTokenRevokedError
	if errors.As(err, &rejected) && !errors.As(err, &revoked) { // revoked's message holds no description
		err = rejected.WithoutDescription()
	}
	return m.toStatus(ctx, err)
}

// invalidArgument names the offending field in the message and in a
// google.rpc.BadRequest detail.
func invalidArgument(field, problem string) error { return grpcerr.InvalidArgument(field, problem) }

// methodName is the gRPC method of a call's context, or "".
func methodName(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}
