package api

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/provider"
)

type connectService struct {
	credbrokerv1.UnimplementedConnectServiceServer
	links *connect.Service
	// hubURL is where links are opened: --public-url, or the Hub's own
	// address; "" when the broker serves no Hub.
	hubURL func() string
	errs   errorMapper
}

// connectKinds are the kinds of account a connect link can link.
var connectKinds = map[credbrokerv1.Provider]provider.Kind{
	credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT: provider.KindJumpCloudServiceAccount,
	credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY:         provider.KindJumpCloudAPIKey,
	credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE: provider.KindOAuth2AuthorizationCode,
}

// ErrHubOff: there is no Hub to open a connect link in.
var ErrHubOff = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_HUB_OFF,
	"this broker serves no Hub (--hub-listen off), so nobody could open a connect link")

func (s *connectService) ListConnectSessions(ctx context.Context, _ *credbrokerv1.ListConnectSessionsRequest) (*credbrokerv1.ListConnectSessionsResponse, error) {
	live, err := s.links.List()
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	resp := &credbrokerv1.ListConnectSessionsResponse{}
	for _, l := range live {
		resp.ConnectSessions = append(resp.ConnectSessions, connectSessionProto(l))
	}
	return resp, nil
}

func (s *connectService) RevokeConnectSession(ctx context.Context, req *credbrokerv1.RevokeConnectSessionRequest) (*credbrokerv1.RevokeConnectSessionResponse, error) {
	id, err := idFromName("name", req.GetName(), connect.PrincipalPrefix, "{id}")
	if err != nil {
		return nil, err
	}
	if err := s.links.Revoke(id, gate.CallFrom(ctx).ChangeEvent("", "")); err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.RevokeConnectSessionResponse{}, nil
}

// connectSessionProto shows a link, never its secret.
func connectSessionProto(l connect.Link) *credbrokerv1.ConnectSession {
	p := credbrokerv1.Provider_PROVIDER_UNSPECIFIED
	for proto, kind := range connectKinds {
		if string(kind) == l.Provider {
			p = proto
		}
	}
	return &credbrokerv1.ConnectSession{
		Name: l.Name(), AccountId: l.AccountID, Provider: p, DisplayName: l.DisplayName,
		CreateTime: timestamppb.New(l.CreateTime), ExpireTime: timestamppb.New(l.ExpireTime), Creator: l.Creator,
	}
}

func (s *connectService) CreateConnectSession(ctx context.Context, req *credbrokerv1.CreateConnectSessionRequest) (*credbrokerv1.CreateConnectSessionResponse, error) {
	if err := checkAccountID("account_id", req.GetAccountId()); err != nil {
		return nil, err
	}
	kind, ok := connectKinds[req.GetProvider()]
	if !ok {
		return nil, invalidArgument("provider", "must be PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, PROVIDER_JUMPCLOUD_API_KEY or PROVIDER_OAUTH2_AUTHORIZATION_CODE")
	}
	var app *provider.Credentials
	if kind == provider.KindOAuth2AuthorizationCode {
		if req.GetOauth2AuthorizationCode() == nil {
			return nil, invalidArgument("oauth2_authorization_code", "is required with PROVIDER_OAUTH2_AUTHORIZATION_CODE")
		}
		in, err := NewAuthorizedAccount(req.GetAccountId(), req.GetDisplayName(), req.GetOauth2AuthorizationCode(), nil)
		if err != nil {
			return nil, err
		}
		app = &in.Credentials
	}
	if err := checkDisplayName("display_name", req.GetDisplayName()); err != nil {
		return nil, err
	}
	ttl := connect.DefaultTTL
	if d := req.GetTtl(); d != nil {
		if ttl = d.AsDuration(); d.CheckValid() != nil || ttl < connect.MinTTL || ttl > connect.MaxTTL {
			return nil, invalidArgument("ttl", fmt.Sprintf("must be between %s and %s", connect.MinTTL, connect.MaxTTL))
		}
	}
	hubURL := s.hubURL()
	if hubURL == "" {
		return nil, ErrHubOff
	}
	c := gate.CallFrom(ctx)
	l, secret, err := s.links.Create(connect.NewLink{
		AccountID: req.GetAccountId(), Provider: string(kind), DisplayName: req.GetDisplayName(), Creator: c.Principal, TTL: ttl, App: app,
	}, c.ChangeEvent(accountPrefix+req.GetAccountId(), ""))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.CreateConnectSessionResponse{ConnectSession: connectSessionProto(l), Url: hubURL + "/connect/" + secret}, nil
}
