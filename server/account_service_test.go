package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

func TestCreateAccountFailuresStoreNothing(t *testing.T) {
	t.Parallel()
	jc := func(mutate func(*credbrokerv1.JumpCloudServiceAccountCredentials)) *credbrokerv1.CreateAccountRequest {
		req := jumpCloudRequest("acme")
		mutate(req.GetJumpcloudServiceAccount())
		return req
	}
	oauth := func(mutate func(*credbrokerv1.OAuth2ClientCredentials)) *credbrokerv1.CreateAccountRequest {
		c := &credbrokerv1.OAuth2ClientCredentials{TokenUrl: "https://idp.example/token", ClientId: "id", ClientSecret: clientSecret}
		mutate(c)
		return &credbrokerv1.CreateAccountRequest{AccountId: "gen", Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{Oauth2ClientCredentials: c}}
	}
	cases := []struct {
		name          string
		req           *credbrokerv1.CreateAccountRequest
		fake          func(*jumpcloudfake.Fake)
		code          codes.Code
		reasonOrField string
		upstream      int // requests the fake must have seen
	}{
		{name: "no credentials", req: &credbrokerv1.CreateAccountRequest{AccountId: "acme"}, code: codes.InvalidArgument, reasonOrField: "credentials"},
		{name: "bad account id", req: func() *credbrokerv1.CreateAccountRequest { r := jumpCloudRequest("Acme_1"); return r }(), code: codes.InvalidArgument, reasonOrField: "account_id"},
		{name: "id too long", req: jumpCloudRequest(fmt.Sprintf("%064d", 0)), code: codes.InvalidArgument, reasonOrField: "account_id"},
		{name: "no client id", req: jc(func(c *credbrokerv1.JumpCloudServiceAccountCredentials) { c.ClientId = "" }), code: codes.InvalidArgument, reasonOrField: "jumpcloud_service_account.client_id"},
		{name: "no secret", req: jc(func(c *credbrokerv1.JumpCloudServiceAccountCredentials) { c.ClientSecret = "" }), code: codes.InvalidArgument, reasonOrField: "jumpcloud_service_account.client_secret"},
		{name: "no region", req: jc(func(c *credbrokerv1.JumpCloudServiceAccountCredentials) { c.Region = 0 }), code: codes.InvalidArgument, reasonOrField: "jumpcloud_service_account.region"},
		{name: "bad org id", req: jc(func(c *credbrokerv1.JumpCloudServiceAccountCredentials) { c.OrgId = "5A1234567890ABCDEF123456" }), code: codes.InvalidArgument, reasonOrField: "jumpcloud_service_account.org_id"},
		{name: "bad label", req: func() *credbrokerv1.CreateAccountRequest {
			r := jumpCloudRequest("acme")
			r.Account.Labels = map[string]string{"Team": "x"}
			return r
		}(), code: codes.InvalidArgument, reasonOrField: "account.labels"},
		{name: "token url in clear", req: oauth(func(c *credbrokerv1.OAuth2ClientCredentials) { c.TokenUrl = "http://idp.example/token" }), code: codes.InvalidArgument, reasonOrField: "oauth2_client_credentials.token_url"},
		{name: "token url with credentials", req: oauth(func(c *credbrokerv1.OAuth2ClientCredentials) { c.TokenUrl = "https://u:p@idp.example/token" }), code: codes.InvalidArgument, reasonOrField: "oauth2_client_credentials.token_url"},
		{name: "reserved endpoint param", req: oauth(func(c *credbrokerv1.OAuth2ClientCredentials) {
			c.EndpointParams = map[string]string{"client_secret": "x"}
		}), code: codes.InvalidArgument, reasonOrField: "oauth2_client_credentials.endpoint_params"},
		{name: "bad api base url", req: oauth(func(c *credbrokerv1.OAuth2ClientCredentials) { c.ApiBaseUrl = "ftp://x" }), code: codes.InvalidArgument, reasonOrField: "oauth2_client_credentials.api_base_url"},
		{name: "wrong secret", req: jc(func(c *credbrokerv1.JumpCloudServiceAccountCredentials) { c.ClientSecret = "wrong" }), code: codes.FailedPrecondition, reasonOrField: "CREDENTIALS_REJECTED", upstream: 1},
		{name: "provider 500", req: jumpCloudRequest("acme"), fake: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.ServerError) }, code: codes.Unavailable, reasonOrField: "PROVIDER_UNAVAILABLE", upstream: 1},
		{name: "provider 429", req: jumpCloudRequest("acme"), fake: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.RateLimited); f.SetRetryAfter("30") }, code: codes.Unavailable, reasonOrField: "PROVIDER_UNAVAILABLE", upstream: 1},
		{name: "provider malformed", req: jumpCloudRequest("acme"), fake: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.Malformed) }, code: codes.Unavailable, reasonOrField: "PROVIDER_UNAVAILABLE", upstream: 1},
		{name: "provider slow", req: jumpCloudRequest("acme"), fake: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.Slow); f.SetDelay(time.Minute) }, code: codes.Unavailable, reasonOrField: "PROVIDER_UNAVAILABLE", upstream: 1},
		{name: "provider unreachable", req: oauth(func(c *credbrokerv1.OAuth2ClientCredentials) { c.TokenUrl = "http://127.0.0.1:1/token" }), code: codes.Unavailable, reasonOrField: "PROVIDER_UNAVAILABLE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, fake, logs := newConfig(t)
			cfg.Provider.Timeout = 300 * time.Millisecond
			b := startWith(t, cfg, fake, logs)
			if tc.fake != nil {
				tc.fake(b.fake)
			}
			_, err := b.accounts.CreateAccount(context.Background(), tc.req)
			st := wantCode(t, err, tc.code, tc.reasonOrField)
			if n := b.fake.Requests(); n != tc.upstream {
				t.Errorf("fake saw %d requests, want %d", n, tc.upstream)
			}
			if tc.name == "wrong secret" {
				info := st.Details()[0].(*errdetails.ErrorInfo)
				if info.GetMetadata()["provider_error"] != "invalid_client" {
					t.Errorf("metadata = %v, want provider_error invalid_client", info.GetMetadata())
				}
				// What to check is what the admin typed.
				if !strings.HasSuffix(st.Message(), "; check the client ID and client secret as JumpCloud showed them, and the region of the organization (an EU or India service account is unknown in the US region): nothing was stored") {
					t.Errorf("the message does not say what to check: %s", st.Message())
				}
			}
			if tc.name == "provider 429" && !hasRetryDelay(st.Details(), 30*time.Second) {
				t.Errorf("429 answer lacks RetryInfo of 30s: %v", st.Details())
			}
			list, err := b.accounts.ListAccounts(context.Background(), &credbrokerv1.ListAccountsRequest{})
			if err != nil || len(list.GetAccounts()) != 0 {
				t.Fatalf("after a failed create: %v accounts, err %v; want none stored", len(list.GetAccounts()), err)
			}
		})
	}
}

func hasRetryDelay(details []any, want time.Duration) bool {
	for _, d := range details {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() == want {
			return true
		}
	}
	return false
}

func TestValidateOnlyAndAlreadyExists(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	req := jumpCloudRequest("acme")
	req.ValidateOnly = true
	resp, err := b.accounts.CreateAccount(context.Background(), req)
	if err != nil || resp.GetAccount().GetName() != "accounts/acme" || b.fake.Requests() != 1 {
		t.Fatalf("validate_only: %v, %v, %d requests", resp, err, b.fake.Requests())
	}
	_, err = b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.NotFound, "")

	b.link(t, "acme")
	_, err = b.accounts.CreateAccount(context.Background(), jumpCloudRequest("acme"))
	wantCode(t, err, codes.AlreadyExists, "")
	if b.fake.Requests() != 2 {
		t.Errorf("ALREADY_EXISTS asked the provider: %d requests, want 2", b.fake.Requests())
	}

	// No account_id: one is generated.
	req = jumpCloudRequest("")
	resp, err = b.accounts.CreateAccount(context.Background(), req)
	if err != nil || len(resp.GetAccount().GetName()) <= len("accounts/") {
		t.Fatalf("generated id: %v, %v", resp, err)
	}
}

// secretID is how the API names a secret, as an admin computes it:
// printf %s "$SECRET" | sha256sum | cut -c1-12.
func secretID(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(sum[:])[:12]
}

func TestAccountLifecycle(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	created := b.link(t, "acme")
	want := &credbrokerv1.Account{
		Name: "accounts/acme", DisplayName: "Acme acme", Provider: credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT,
		ClientId: clientID, Region: credbrokerv1.Region_REGION_US, OrgId: orgID, ApiBaseUrl: b.cfg.Provider.JumpCloudAPIURLUS,
		TokenUrl: b.cfg.Provider.JumpCloudTokenURLUS, State: credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE,
		Secrets: []*credbrokerv1.AccountSecret{{SecretId: secretID(clientSecret)}},
	}
	got := proto.Clone(created).(*credbrokerv1.Account)
	if got.CreateTime == nil || got.UpdateTime == nil || got.LastTokenTime == nil || len(got.Secrets) != 1 ||
		!got.Secrets[0].GetCreateTime().AsTime().Equal(got.CreateTime.AsTime()) || !got.Secrets[0].GetLastUseTime().AsTime().Equal(got.LastTokenTime.AsTime()) {
		t.Fatalf("times missing: %v", got)
	}
	got.CreateTime, got.UpdateTime, got.LastTokenTime = nil, nil, nil
	got.Secrets[0].CreateTime, got.Secrets[0].LastUseTime = nil, nil
	if !proto.Equal(got, want) {
		t.Fatalf("created\n got %v\nwant %v", got, want)
	}

	// EU accounts get the EU endpoints.
	eu := jumpCloudRequest("acme-eu")
	eu.GetJumpcloudServiceAccount().Region = credbrokerv1.Region_REGION_EU
	euResp, err := b.accounts.CreateAccount(ctx, eu)
	if err != nil || euResp.GetAccount().GetApiBaseUrl() != b.cfg.Provider.JumpCloudAPIURLEU || euResp.GetAccount().GetTokenUrl() != b.cfg.Provider.JumpCloudTokenURLEU {
		t.Fatalf("EU account: %v, %v", euResp, err)
	}

	// Pages.
	for i := range 3 {
		b.link(t, fmt.Sprintf("zz-%d", i))
	}
	var names []string
	tok := ""
	for pages := 0; ; pages++ {
		resp, err := b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{PageSize: 2, PageToken: tok})
		if err != nil || pages > 5 {
			t.Fatalf("ListAccounts: %v (page %d)", err, pages)
		}
		for _, a := range resp.GetAccounts() {
			names = append(names, a.GetName())
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	if fmt.Sprint(names) != "[accounts/acme accounts/acme-eu accounts/zz-0 accounts/zz-1 accounts/zz-2]" {
		t.Fatalf("listed %v", names)
	}
	_, err = b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{PageToken: "not a token"})
	wantCode(t, err, codes.InvalidArgument, "page_token")
	_, err = b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{PageSize: -1})
	wantCode(t, err, codes.InvalidArgument, "page_size")

	// Updates.
	update := func(a *credbrokerv1.Account, paths ...string) (*credbrokerv1.Account, error) {
		req := &credbrokerv1.UpdateAccountRequest{Account: a}
		if paths != nil {
			req.UpdateMask = &fieldmaskpb.FieldMask{Paths: paths}
		}
		resp, err := b.accounts.UpdateAccount(ctx, req)
		return resp.GetAccount(), err
	}
	a, err := update(&credbrokerv1.Account{Name: "accounts/acme", Labels: map[string]string{"team": "billing"}, DisplayName: "ignored"}, "labels")
	if err != nil || a.GetLabels()["team"] != "billing" || a.GetDisplayName() != "Acme acme" {
		t.Fatalf("update labels: %v, %v", a, err)
	}
	a, err = update(&credbrokerv1.Account{Name: "accounts/acme", DisplayName: "Acme prod"})
	if err != nil || a.GetDisplayName() != "Acme prod" || a.GetLabels()["team"] != "billing" || !a.GetUpdateTime().AsTime().After(created.GetUpdateTime().AsTime()) {
		t.Fatalf("update with implied mask: %v, %v", a, err)
	}
	a, err = update(&credbrokerv1.Account{Name: "accounts/acme"}, "*")
	if err != nil || a.GetDisplayName() != "" || len(a.GetLabels()) != 0 {
		t.Fatalf("update *: %v, %v", a, err)
	}
	_, err = update(&credbrokerv1.Account{Name: "accounts/acme", ClientId: "x"}, "client_id")
	wantCode(t, err, codes.InvalidArgument, "update_mask")
	_, err = update(&credbrokerv1.Account{Name: "accounts/acme"})
	wantCode(t, err, codes.InvalidArgument, "update_mask")
	_, err = update(&credbrokerv1.Account{Name: "accounts/nope", DisplayName: "x"})
	wantCode(t, err, codes.NotFound, "")
	_, err = update(nil, "labels")
	wantCode(t, err, codes.InvalidArgument, "account")

	// Delete: the account and its tokens are gone at once.
	b.token(t, "acme")
	if _, err := b.accounts.DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: "accounts/acme"}); err != nil {
		t.Fatal(err)
	}
	_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.PermissionDenied, "") // its grants went with it
	_, err = b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.NotFound, "")
	_, err = b.accounts.DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.NotFound, "")
	_, err = b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "acme"})
	wantCode(t, err, codes.InvalidArgument, "name")

	// It stays deleted after a restart; the others stay.
	b = b.restart(t)
	_, err = b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.NotFound, "")
	if _, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/zz-0"}); err != nil {
		t.Fatal(err)
	}
}

func TestOAuth2ClientCredentialsAccount(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	// The JumpCloud fake insists on scope=api, which this account asks for.
	resp, err := b.accounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{
		AccountId: "generic",
		Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{
			TokenUrl: b.cfg.Provider.JumpCloudTokenURLUS, ClientId: clientID, ClientSecret: clientSecret, Scopes: []string{"api"},
			ApiBaseUrl: "https://api.example/v1",
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.grant(t, "generic", svcPrincipal)
	a := resp.GetAccount()
	if a.GetProvider() != credbrokerv1.Provider_PROVIDER_OAUTH2_CLIENT_CREDENTIALS || a.GetAuthStyle() != credbrokerv1.AuthStyle_AUTH_STYLE_HEADER || a.GetApiBaseUrl() != "https://api.example/v1" {
		t.Fatalf("account = %v", a)
	}
	tok := b.token(t, "generic")
	if tok.GetAccessToken() != b.fake.LastToken() || tok.GetApiBaseUrl() != "https://api.example/v1" || len(tok.GetHeaders()) != 0 {
		t.Fatalf("token for the generic account: matches fake %v, api_base_url %q, headers %v", tok.GetAccessToken() == b.fake.LastToken(), tok.GetApiBaseUrl(), tok.GetHeaders())
	}
}

// India: its token endpoint is unverified, so a broker without
// --jumpcloud-token-url-in refuses India service accounts with
// REGION_NOT_CONFIGURED (asking nothing of anyone) and still links India
// API keys against India's API; configured, India service accounts link
// against the configured endpoint.
func TestIndiaRegion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, fake, logs := newConfig(t)
	in := httptest.NewServer(fake)
	t.Cleanup(in.Close)
	cfg.Provider.JumpCloudAPIURLIN = in.URL + jumpcloudfake.APIPath
	b := startWith(t, cfg, fake, logs)
	india := jumpCloudRequest("acme-in")
	india.GetJumpcloudServiceAccount().Region = credbrokerv1.Region_REGION_IN
	requests := fake.Requests()
	_, err := b.accounts.CreateAccount(ctx, india)
	st := wantCode(t, err, codes.FailedPrecondition, credbrokerv1.ErrorReason_REGION_NOT_CONFIGURED.String())
	if !strings.Contains(st.Message(), "--jumpcloud-token-url-in") || fake.Requests() != requests {
		t.Fatalf("an India service account without its token endpoint: %q, %d requests", st.Message(), fake.Requests()-requests)
	}
	fake.SetAPIKey(apiKey, orgID)
	key := apiKeyRequest("legacy-in", apiKey, orgID)
	key.GetJumpcloudApiKey().Region = credbrokerv1.Region_REGION_IN
	resp, err := b.accounts.CreateAccount(ctx, key)
	if err != nil || resp.GetAccount().GetApiBaseUrl() != cfg.Provider.JumpCloudAPIURLIN || resp.GetAccount().GetRegion() != credbrokerv1.Region_REGION_IN {
		t.Fatalf("an India API key: %v, %v", resp, err)
	}
	b.stop()

	cfg.Provider.JumpCloudTokenURLIN = in.URL + jumpcloudfake.TokenPath
	b = startWith(t, cfg, fake, logs)
	resp, err = b.accounts.CreateAccount(ctx, india)
	if err != nil || resp.GetAccount().GetTokenUrl() != cfg.Provider.JumpCloudTokenURLIN || resp.GetAccount().GetApiBaseUrl() != cfg.Provider.JumpCloudAPIURLIN {
		t.Fatalf("an India service account with its token endpoint configured: %v, %v", resp, err)
	}
}
