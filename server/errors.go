package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/proxy"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// errorDomain is the google.rpc.ErrorInfo domain of credbroker's errors.
const errorDomain = "credbroker"

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
		return withDetails(codes.FailedPrecondition, "a stored record of this resource failed its integrity check (it was changed outside the broker), so the broker does not use it: delete and re-create it, or restore a backup",
			errorInfo(credbrokerv1.ErrorReason_INTEGRITY_CHECK_FAILED, nil))
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
		return withDetails(codes.FailedPrecondition, err.Error(), errorInfo(credbrokerv1.ErrorReason_SECRET_LIMIT, nil))
	case errors.Is(err, accounts.ErrLastSecret):
		return withDetails(codes.FailedPrecondition, err.Error(), errorInfo(credbrokerv1.ErrorReason_LAST_SECRET, nil))
	case errors.Is(err, tokens.ErrSecretsExpired):
		return withDetails(codes.FailedPrecondition, err.Error(), errorInfo(credbrokerv1.ErrorReason_SECRET_EXPIRED, nil))
	case errors.Is(err, tokens.ErrProxyOnly):
		return withDetails(codes.FailedPrecondition, err.Error(), errorInfo(credbrokerv1.ErrorReason_PROXY_ONLY, nil))
	case errors.Is(err, proxy.ErrBadPath):
		return invalidArgument("path", err.Error())
	case errors.Is(err, proxy.ErrMethod):
		return invalidArgument("method", err.Error())
	case errors.Is(err, proxy.ErrNoAPIBase):
		return withDetails(codes.FailedPrecondition, err.Error(), errorInfo(credbrokerv1.ErrorReason_NO_API_BASE_URL, nil))
	case errors.As(err, &tooLarge):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, proxy.ErrAnswerBroken):
		return withDetails(codes.Unavailable, err.Error(), errorInfo(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil))
	case errors.As(err, &upstream):
		return withDetails(codes.Unavailable, upstream.Error(), errorInfo(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil))
	case errors.Is(err, callers.ErrLastAdmin):
		return withDetails(codes.FailedPrecondition, err.Error(), errorInfo(credbrokerv1.ErrorReason_LAST_ADMIN, nil))
	case errors.As(err, &rejected):
		meta := map[string]string{}
		if rejected.Code != "" {
			meta["provider_error"] = rejected.Code
		}
		if rejected.Description != "" {
			meta["provider_error_description"] = rejected.Description
		}
		return withDetails(codes.FailedPrecondition, rejected.Error()+"; an admin must fix the credentials at the provider",
			errorInfo(credbrokerv1.ErrorReason_CREDENTIALS_REJECTED, meta))
	case errors.As(err, &redirected):
		return withDetails(codes.FailedPrecondition, redirected.Error(), errorInfo(credbrokerv1.ErrorReason_PROVIDER_REDIRECTED, nil))
	case errors.As(err, &unavailable):
		retry := unavailable.RetryAfter
		if errors.As(err, &fetch) {
			retry = time.Until(fetch.RetryAt)
		}
		info := errorInfo(credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE, nil)
		if retry <= 0 {
			return withDetails(codes.Unavailable, unavailable.Error(), info)
		}
		return withDetails(codes.Unavailable, unavailable.Error(), info,
			&errdetails.RetryInfo{RetryDelay: durationpb.New(retry.Round(time.Second))})
	case errors.As(err, &refreshLimited):
		return withDetails(codes.ResourceExhausted, refreshLimited.Error(), errorInfo(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(max(time.Until(refreshLimited.RetryAt), 0).Round(time.Millisecond))})
	case errors.As(err, &tooLong):
		return withDetails(codes.OutOfRange, tooLong.Error(),
			errorInfo(credbrokerv1.ErrorReason_MIN_TTL_TOO_LONG, map[string]string{"max_ttl": tooLong.Max.Round(time.Second).String()}))
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

func errorInfo(reason credbrokerv1.ErrorReason, meta map[string]string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: reason.String(), Domain: errorDomain, Metadata: meta}
}

// invalidArgument names the offending field in the message and in a
// google.rpc.BadRequest detail.
func invalidArgument(field, problem string) error {
	return withDetails(codes.InvalidArgument, field+": "+problem,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: problem}}})
}

func withDetails(code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st := status.New(code, msg)
	if withD, err := st.WithDetails(details...); err == nil {
		st = withD
	}
	return st.Err()
}
