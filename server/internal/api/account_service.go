package api

import (
	"context"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

type accountService struct {
	credbrokerv1.UnimplementedAccountServiceServer
	accounts *accounts.Service
	callers  *callers.Service
	errs     errorMapper
}

func (s *accountService) CreateAccount(ctx context.Context, req *credbrokerv1.CreateAccountRequest) (*credbrokerv1.CreateAccountResponse, error) {
	in, err := NewAccount(req)
	if err != nil {
		return nil, err
	}
	if in.ID == "" {
		in.ID = accounts.NewID()
	}
	c := gate.CallFrom(ctx)
	v, err := s.accounts.Create(ctx, in, req.GetValidateOnly(), c.ChangeEvent(accountPrefix+in.ID, ""))
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
	size, after, err := idPage(req)
	if err != nil {
		return nil, err
	}
	keep, err := accountFilter(req)
	if err != nil {
		return nil, err
	}
	resp := &credbrokerv1.ListAccountsResponse{Accounts: make([]*credbrokerv1.Account, 0, size)}
	var last string
	more, err := s.accounts.List(after, size, keep, func(v accounts.View) {
		resp.Accounts = append(resp.Accounts, accountProto(v))
		last = v.ID
	})
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	if more {
		resp.NextPageToken = idPageToken(last)
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
	call := gate.CallFrom(ctx)
	v, err := s.accounts.Update(ctx, id, c, call.ChangeEvent(accountPrefix+id, "update_mask "+strings.Join(paths, ",")))
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
	c := gate.CallFrom(ctx)
	if err := s.accounts.Delete(ctx, id, c.ChangeEvent(accountPrefix+id, "")); err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.DeleteAccountResponse{}, nil
}

func (s *accountService) AddAccountGrant(ctx context.Context, req *credbrokerv1.AddAccountGrantRequest) (*credbrokerv1.AddAccountGrantResponse, error) {
	id, principal, err := s.grantRequest(req)
	if err != nil {
		return nil, err
	}
	limits, err := grantLimits(req.GetHttpMethods(), req.GetPathPrefixes())
	if err != nil {
		return nil, err
	}
	if keyID, ok := strings.CutPrefix(principal, callers.KeyPrincipalPrefix); ok && !s.callers.Exists(keyID) {
		return nil, s.errs.toStatus(ctx, callers.ErrNotFound)
	}
	detail := "grant " + principal
	if limits.Limited() {
		detail += " limited to " + limits.String()
	}
	c := gate.CallFrom(ctx)
	v, _, err := s.accounts.AddGrant(ctx, id, principal, limits, c.Principal, c.ChangeEvent(accountPrefix+id, detail))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.AddAccountGrantResponse{Account: accountProto(v)}, nil
}

func (s *accountService) RemoveAccountGrant(ctx context.Context, req *credbrokerv1.RemoveAccountGrantRequest) (*credbrokerv1.RemoveAccountGrantResponse, error) {
	id, principal, err := s.grantRequest(req)
	if err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	v, err := s.accounts.RemoveGrant(ctx, id, principal, c.ChangeEvent(accountPrefix+id, "remove grant "+principal))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.RemoveAccountGrantResponse{Account: accountProto(v)}, nil
}

// accountFilter is ListAccounts' state and state_reason filter; nil for none.
func accountFilter(req *credbrokerv1.ListAccountsRequest) (func(accounts.View) bool, error) {
	state, reason := req.GetState(), req.GetStateReason()
	if _, ok := credbrokerv1.AccountState_name[int32(state)]; !ok {
		return nil, invalidArgument("state", "is not a known AccountState")
	}
	if _, ok := credbrokerv1.AccountStateReason_name[int32(reason)]; !ok {
		return nil, invalidArgument("state_reason", "is not a known AccountStateReason")
	}
	if state == credbrokerv1.AccountState_ACCOUNT_STATE_UNSPECIFIED && reason == credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_UNSPECIFIED {
		return nil, nil
	}
	return func(v accounts.View) bool {
		return (state == credbrokerv1.AccountState_ACCOUNT_STATE_UNSPECIFIED || stateProto[v.Status.State] == state) &&
			(reason == credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_UNSPECIFIED || stateReason(v) == reason)
	}, nil
}

// stateReason is why an account is in its state.
func stateReason(v accounts.View) credbrokerv1.AccountStateReason {
	switch st := v.Status; {
	case st.State == tokens.StateActive && v.Expiry.Soon:
		return credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_SECRET_EXPIRING
	case st.State == tokens.StateActive || st.LastError == nil:
		return credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_UNSPECIFIED
	default:
		return stateReasonProto[st.LastError.Reason]
	}
}

func (s *accountService) AddAccountSecret(ctx context.Context, req *credbrokerv1.AddAccountSecretRequest) (*credbrokerv1.AddAccountSecretResponse, error) {
	id, err := parseName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if err := checkSecret("secret", req.GetSecret()); err != nil {
		return nil, err
	}
	expire, err := futureTime("expire_time", req.GetExpireTime(), time.Now())
	if err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	v, secretID, err := s.accounts.AddSecret(ctx, id, secret.New(req.GetSecret()), expire, c.ChangeEvent(accountPrefix+id, ""))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.AddAccountSecretResponse{Account: accountProto(v), SecretId: secretID}, nil
}

func (s *accountService) RemoveAccountSecret(ctx context.Context, req *credbrokerv1.RemoveAccountSecretRequest) (*credbrokerv1.RemoveAccountSecretResponse, error) {
	id, err := parseName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if err := checkText("secret_id", req.GetSecretId(), true, 64); err != nil {
		return nil, err
	}
	c := gate.CallFrom(ctx)
	v, err := s.accounts.RemoveSecret(ctx, id, req.GetSecretId(), c.ChangeEvent(accountPrefix+id, ""))
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	return &credbrokerv1.RemoveAccountSecretResponse{Account: accountProto(v)}, nil
}

// grantRequest checks the account name and principal of a grant change.
func (s *accountService) grantRequest(req interface {
	GetName() string
	GetPrincipal() string
}) (string, string, error) {
	id, err := parseName("name", req.GetName())
	if err != nil {
		return "", "", err
	}
	return id, req.GetPrincipal(), checkPrincipal("principal", req.GetPrincipal())
}

// accountProto shows an account. It reads no sealed field.
func accountProto(v accounts.View) *credbrokerv1.Account {
	a := &credbrokerv1.Account{
		Name:                  accountPrefix + v.ID,
		DisplayName:           v.DisplayName,
		Labels:                v.Labels,
		ClientId:              v.Credentials.ClientID,
		OrgId:                 v.Credentials.OrgID,
		ApiBaseUrl:            v.APIBaseURL,
		TokenUrl:              v.TokenURL,
		CreateTime:            timestamp(v.CreateTime),
		UpdateTime:            timestamp(v.UpdateTime),
		LastTokenTime:         timestamp(v.Status.LastTokenTime),
		State:                 stateProto[v.Status.State],
		StateReason:           stateReason(v),
		CredentialsExpireTime: timestamp(v.Expiry.Time),
	}
	for _, g := range v.Grants {
		a.Grants = append(a.Grants, &credbrokerv1.Grant{
			Principal: g.Principal, CreateTime: timestamp(g.CreateTime), Creator: g.Creator,
			HttpMethods: g.Limits.Methods, PathPrefixes: g.Limits.PathPrefixes,
		})
	}
	switch cr := v.Credentials; cr.Kind {
	case provider.KindJumpCloudServiceAccount:
		a.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT
		a.Region = regionProto[cr.Region]
	case provider.KindJumpCloudAPIKey:
		a.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY
		a.Region = regionProto[cr.Region]
	case provider.KindOAuth2ClientCredentials, provider.KindOAuth2AuthorizationCode:
		a.Provider = credbrokerv1.Provider_PROVIDER_OAUTH2_CLIENT_CREDENTIALS
		if cr.Kind == provider.KindOAuth2AuthorizationCode {
			a.Provider = credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE
			a.AuthorizationUrl, a.AuthorizationParams = cr.AuthURL, cr.AuthParams
		}
		a.Scopes, a.EndpointParams = cr.Scopes, cr.EndpointParams
		a.AuthStyle = credbrokerv1.AuthStyle_AUTH_STYLE_HEADER
		if cr.AuthStyle == provider.AuthStyleBody {
			a.AuthStyle = credbrokerv1.AuthStyle_AUTH_STYLE_BODY
		}
	}
	a.LastError = accountError(v.Status.LastError)
	for _, sec := range slices.Backward(v.Secrets) { // stored oldest first
		use := v.Status.SecretUse.Of(sec.ID)
		a.Secrets = append(a.Secrets, &credbrokerv1.AccountSecret{
			SecretId: sec.ID, CreateTime: timestamp(sec.CreateTime), ExpireTime: timestamp(sec.ExpireTime),
			LastUseTime: timestamp(use.LastUsed), Rejected: accountError(use.Rejected),
		})
	}
	return a
}

func accountError(f *tokens.Failure) *credbrokerv1.AccountError {
	if f == nil {
		return nil
	}
	return &credbrokerv1.AccountError{
		Reason:                   reasonProto[f.Reason],
		Message:                  f.Message,
		ProviderError:            f.ProviderError,
		ProviderErrorDescription: f.ProviderErrorDescription,
		Time:                     timestamp(f.Time),
	}
}

var (
	stateProto = map[tokens.State]credbrokerv1.AccountState{
		tokens.StateActive:         credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE,
		tokens.StateDegraded:       credbrokerv1.AccountState_ACCOUNT_STATE_DEGRADED,
		tokens.StateNeedsAttention: credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION,
	}
	regionProto = map[string]credbrokerv1.Region{
		provider.RegionUS: credbrokerv1.Region_REGION_US,
		provider.RegionEU: credbrokerv1.Region_REGION_EU,
		provider.RegionIN: credbrokerv1.Region_REGION_IN,
	}
	stateReasonProto = map[tokens.Reason]credbrokerv1.AccountStateReason{
		tokens.ReasonCredentialsRejected: credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED,
		tokens.ReasonProviderUnavailable: credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_PROVIDER_UNAVAILABLE,
		tokens.ReasonInternal:            credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_BROKER_FAULT,
		tokens.ReasonSecretExpired:       credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_SECRET_EXPIRED,
		tokens.ReasonIntegrity:           credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_INTEGRITY_CHECK_FAILED,
		tokens.ReasonProviderRedirected:  credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_PROVIDER_REDIRECTED,
		tokens.ReasonRefreshTokenRevoked: credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_REFRESH_TOKEN_REVOKED,
	}
	reasonProto = map[tokens.Reason]credbrokerv1.ErrorReason{
		tokens.ReasonCredentialsRejected: credbrokerv1.ErrorReason_CREDENTIALS_REJECTED,
		tokens.ReasonProviderUnavailable: credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE,
		tokens.ReasonSecretExpired:       credbrokerv1.ErrorReason_SECRET_EXPIRED,
		tokens.ReasonIntegrity:           credbrokerv1.ErrorReason_INTEGRITY_CHECK_FAILED,
		tokens.ReasonProviderRedirected:  credbrokerv1.ErrorReason_PROVIDER_REDIRECTED,
		tokens.ReasonRefreshTokenRevoked: credbrokerv1.ErrorReason_REFRESH_TOKEN_REVOKED,
	}
)

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
