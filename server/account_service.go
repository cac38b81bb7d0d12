package server

import (
	"context"
	"encoding/base64"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

type accountService struct {
	credbrokerv1.UnimplementedAccountServiceServer
	accounts *accounts.Service
	errs     errorMapper
}

func (s *accountService) CreateAccount(ctx context.Context, req *credbrokerv1.CreateAccountRequest) (*credbrokerv1.CreateAccountResponse, error) {
	in, err := newAccount(req)
	if err != nil {
		return nil, err
	}
	v, err := s.accounts.Create(ctx, in, req.GetValidateOnly())
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.CreateAccountResponse{Account: accountProto(v)}, nil
}

func (s *accountService) GetAccount(ctx context.Context, req *credbrokerv1.GetAccountRequest) (*credbrokerv1.GetAccountResponse, error) {
	id, err := parseName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	v, err := s.accounts.Get(id)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.GetAccountResponse{Account: accountProto(v)}, nil
}

func (s *accountService) ListAccounts(ctx context.Context, req *credbrokerv1.ListAccountsRequest) (*credbrokerv1.ListAccountsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalidArgument("page_size", "must not be negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || checkAccountID("page_token", string(raw)) != nil {
			return nil, invalidArgument("page_token", "is not a token this server issued")
		}
		after = string(raw)
	}
	views, more, err := s.accounts.List(after, size)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	resp := &credbrokerv1.ListAccountsResponse{Accounts: make([]*credbrokerv1.Account, len(views))}
	for i, v := range views {
		resp.Accounts[i] = accountProto(v)
	}
	if more {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(views[len(views)-1].ID))
	}
	return resp, nil
}

func (s *accountService) UpdateAccount(ctx context.Context, req *credbrokerv1.UpdateAccountRequest) (*credbrokerv1.UpdateAccountResponse, error) {
	in := req.GetAccount()
	if in == nil {
		return nil, invalidArgument("account", "is required")
	}
	id, err := parseName("account.name", in.GetName())
	if err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 { // AIP-134: the fields that are set
		if in.GetDisplayName() != "" {
			paths = append(paths, "display_name")
		}
		if len(in.GetLabels()) > 0 {
			paths = append(paths, "labels")
		}
		if len(paths) == 0 {
			return nil, invalidArgument("update_mask", `nothing to update: name "display_name" and/or "labels"`)
		}
	}
	var c accounts.Changes
	for _, p := range paths {
		switch p {
		case "display_name":
			c.DisplayName = &in.DisplayName
		case "labels":
			c.Labels = &in.Labels
		case "*":
			c.DisplayName, c.Labels = &in.DisplayName, &in.Labels
		default:
			return nil, invalidArgument("update_mask", `unknown or immutable path "`+p+`": only "display_name" and "labels" can be updated`)
		}
	}
	if c.DisplayName != nil {
		if err := checkDisplayName("account.display_name", *c.DisplayName); err != nil {
			return nil, err
		}
	}
	if c.Labels != nil {
		if err := checkLabels("account.labels", *c.Labels); err != nil {
			return nil, err
		}
	}
	v, err := s.accounts.Update(id, c)
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.UpdateAccountResponse{Account: accountProto(v)}, nil
}

func (s *accountService) DeleteAccount(ctx context.Context, req *credbrokerv1.DeleteAccountRequest) (*credbrokerv1.DeleteAccountResponse, error) {
	id, err := parseName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if err := s.accounts.Delete(id); err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.DeleteAccountResponse{}, nil
}

// accountProto shows an account. It reads no sealed field.
func accountProto(v accounts.View) *credbrokerv1.Account {
	a := &credbrokerv1.Account{
		Name:          accountPrefix + v.ID,
		DisplayName:   v.DisplayName,
		Labels:        v.Labels,
		ClientId:      v.ClientID,
		OrgId:         v.OrgID,
		ApiBaseUrl:    v.APIBaseURL,
		TokenUrl:      v.TokenURL,
		CreateTime:    timestamp(v.CreateTime),
		UpdateTime:    timestamp(v.UpdateTime),
		LastTokenTime: timestamp(v.Status.LastTokenTime),
		State:         stateProto[v.Status.State],
	}
	switch v.Provider {
	case provider.KindJumpCloudServiceAccount:
		a.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT
		a.Region = regionProto[v.Region]
	case provider.KindOAuth2ClientCredentials:
		a.Provider = credbrokerv1.Provider_PROVIDER_OAUTH2_CLIENT_CREDENTIALS
		a.Scopes, a.EndpointParams = v.Scopes, v.EndpointParams
		a.AuthStyle = credbrokerv1.AuthStyle_AUTH_STYLE_HEADER
		if v.AuthStyle == provider.AuthStyleBody {
			a.AuthStyle = credbrokerv1.AuthStyle_AUTH_STYLE_BODY
		}
	}
	if f := v.Status.LastError; f != nil {
		a.LastError = &credbrokerv1.AccountError{
			Reason:                   reasonProto[f.Reason],
			Message:                  f.Message,
			ProviderError:            f.ProviderError,
			ProviderErrorDescription: f.ProviderErrorDescription,
			Time:                     timestamp(f.Time),
		}
	}
	return a
}

var (
	stateProto = map[string]credbrokerv1.AccountState{
		tokens.StateActive:         credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE,
		tokens.StateDegraded:       credbrokerv1.AccountState_ACCOUNT_STATE_DEGRADED,
		tokens.StateNeedsAttention: credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION,
	}
	regionProto = map[string]credbrokerv1.Region{
		provider.RegionUS: credbrokerv1.Region_REGION_US,
		provider.RegionEU: credbrokerv1.Region_REGION_EU,
	}
	reasonProto = map[string]credbrokerv1.ErrorReason{
		tokens.ReasonCredentialsRejected: credbrokerv1.ErrorReason_CREDENTIALS_REJECTED,
		tokens.ReasonProviderUnavailable: credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE,
	}
)

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
