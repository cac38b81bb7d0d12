package api

import (
	"context"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

type tokenService struct {
	credbrokerv1.UnimplementedTokenServiceServer
	tokens  *tokens.Manager
	grants  *grants.Index
	errs    errorMapper
	metrics *metrics.Metrics
}

// GetToken is the hot path: no store access, no lock held across I/O. The
// gate writes its audit event (group commit) after it returns.
func (s *tokenService) GetToken(ctx context.Context, req *credbrokerv1.GetTokenRequest) (_ *credbrokerv1.GetTokenResponse, err error) {
	// Counted by account only once the caller may know the account exists,
	// so that names sent by callers cannot grow the metric.
	account := ""
	defer func() { s.metrics.TokenRequest(account, grpcerr.CodeName(status.Code(err))) }()
	id, err := parseName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	limits, ok := s.grants.Lookup(id, c.Principal)
	c.Refused = !ok || limits.Limited()
	if !ok {
		// The same answer whether or not the account exists.
		return nil, grants.NoGrant(c.Principal, req.GetName())
	}
	account = id
	if limits.Limited() {
		return nil, grants.NoTokens(c.Principal, req.GetName(), limits)
	}
	var minTTL time.Duration
	if d := req.GetMinTtl(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, invalidArgument("min_ttl", "must be a non-negative duration")
		}
		minTTL = d.AsDuration()
	}
	is, err := s.tokens.Get(ctx, id, minTTL)
	if err != nil {
		return nil, s.errs.toCallerStatus(ctx, err)
	}
	c.Fingerprint = is.Fingerprint()
	return &credbrokerv1.GetTokenResponse{
		AccessToken: is.AccessToken.Reveal(),
		TokenType:   is.TokenType,
		ExpireTime:  timestamppb.New(is.Expiry),
		ApiBaseUrl:  is.APIBaseURL,
		Headers:     is.Headers,
	}, nil
}
