package api

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/proxy"
	"github.com/credbroker/credbroker/server/internal/rpcstatus"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// errorMapper turns every error a handler meets into a status, in one place.
// Unexpected errors are logged here and reach the caller only as a generic
// INTERNAL, so no detail of the broker's insides (or a secret) leaks.
type errorMapper struct{ log *slog.Logger }

func (m errorMapper) toStatus(ctx context.Context, err error) error {
	if _, ok := status.FromError(err); ok {
		return err // already a status, e.g. from validation
	}
	var (
		rejected       *provider.RejectedError
		redirected     *provider.RedirectedError
		unavailable    *provider.UnavailableError
		tooLong        *tokens.MinTTLTooLongError
		refreshLimited *tokens.RefreshLimitedError
		fetch          *tokens.FetchError
		tooLarge       *proxy.TooLargeError
		upstream       *proxy.UpstreamError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the call's deadline passed")
	case errors.Is(err, store.ErrIntegrity):
		return rpcstatus.WithDetails(codes.FailedPrecondition, "a stored record of this resource failed its integrity check (it was changed outside the broker), so the broker does not use it: delete and re-create it, or restore a backup",
			rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_INTEGRITY_CHECK_FAILED, nil))
	case errors.Is(err, accounts.ErrNotFound), errors.Is(err, tokens.ErrNotFound):
		return status.Error(codes.NotFound, "account not found")
	case errors.Is(err, accounts.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, "an account with this account_id already exists")
	case errors.Is(err, accounts.ErrNoSuchGrant), errors.Is(err, callers.ErrNotFound), errors.Is(err, callers.ErrNotAdmin):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, callers.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, accounts.ErrSecretExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, accounts.ErrNoSuchSecret):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, accounts.ErrSecretLimit):
		return rpcstatus.WithDetails(codes.FailedPrecondition, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_SECRET_LIMIT, nil))
	case errors.Is(err, accounts.ErrLastSecret):
		return rpcstatus.WithDetails(codes.FailedPrecondition, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_LAST_SECRET, nil))
	case errors.Is(err, tokens.ErrSecretsExpired):
		return rpcstatus.WithDetails(codes.FailedPrecondition, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_SECRET_EXPIRED, nil))
	case errors.Is(err, tokens.ErrProxyOnly):
		return rpcstatus.WithDetails(codes.FailedPrecondition, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_PROXY_ONLY, nil))
	case errors.Is(err, proxy.ErrBadPath):
		return invalidArgument("path", err.Error())
	case errors.Is(err, proxy.ErrMethod):
		return invalidArgument("method", err.Error())
	case errors.Is(err, proxy.ErrNoAPIBase):
		return rpcstatus.WithDetails(codes.FailedPrecondition, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_NO_API_BASE_URL, nil))
	case errors.As(err, &tooLarge):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, proxy.ErrAnswerBroken):
		return rpcstatus.WithDetails(codes.Unavailable, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil))
	case errors.As(err, &upstream):
		return rpcstatus.WithDetails(codes.Unavailable, upstream.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil))
	case errors.Is(err, callers.ErrLastAdmin):
		return rpcstatus.WithDetails(codes.FailedPrecondition, err.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_LAST_ADMIN, nil))
	case errors.As(err, &rejected):
		meta := map[string]string{}
		if rejected.Code != "" {
			meta["provider_error"] = rejected.Code
		}
		if rejected.Description != "" {
			meta["provider_error_description"] = rejected.Description
		}
		return rpcstatus.WithDetails(codes.FailedPrecondition, rejected.Error()+"; an admin must fix the credentials at the provider",
			rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_CREDENTIALS_REJECTED, meta))
	case errors.As(err, &redirected):
		return rpcstatus.WithDetails(codes.FailedPrecondition, redirected.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_PROVIDER_REDIRECTED, nil))
	case errors.As(err, &unavailable):
		retry := unavailable.RetryAfter
		if errors.As(err, &fetch) {
			retry = time.Until(fetch.RetryAt)
		}
		info := rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil)
		if retry <= 0 {
			return rpcstatus.WithDetails(codes.Unavailable, unavailable.Error(), info)
		}
		return rpcstatus.WithDetails(codes.Unavailable, unavailable.Error(), info,
			&errdetails.RetryInfo{RetryDelay: durationpb.New(retry.Round(time.Second))})
	case errors.As(err, &refreshLimited):
		return rpcstatus.WithDetails(codes.ResourceExhausted, refreshLimited.Error(), rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(max(time.Until(refreshLimited.RetryAt), 0).Round(time.Millisecond))})
	case errors.As(err, &tooLong):
		return rpcstatus.WithDetails(codes.OutOfRange, tooLong.Error(),
			rpcstatus.ErrorInfo(credbrokerv1.ErrorReason_MIN_TTL_TOO_LONG, map[string]string{"max_ttl": tooLong.Max.Round(time.Second).String()}))
	}
	m.log.Error("internal error", "method", methodName(ctx), "error", err)
	return status.Error(codes.Internal, "internal error")
}

// toCallerStatus is toStatus for callers of GetToken and the egress proxy:
// of a provider's rejection they see the OAuth2 `error` code only, since
// its description may hold anything; admins see it in GetAccount.
func (m errorMapper) toCallerStatus(ctx context.Context, err error) error {
	var rejected *provider.RejectedError
	if errors.As(err, &rejected) {
		err = rejected.WithoutDescription()
	}
	return m.toStatus(ctx, err)
}

// invalidArgument names the offending field in the message and in a
// google.rpc.BadRequest detail.
func invalidArgument(field, problem string) error {
	return rpcstatus.WithDetails(codes.InvalidArgument, field+": "+problem,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: problem}}})
}

// methodName is the gRPC method of a call's context, or "".
func methodName(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}
