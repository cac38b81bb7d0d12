package hub

import (
	"net/http"
	"net/url"
	"strings"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/signin"
)

// linkForm is the "Link an account" form of one kind as sent: never its
// secret, which is not shown again, even to fix another field.
type linkForm struct {
	// Kind is the form's, as the URL names it (see linkKinds).
	Kind                                            string
	AccountID, DisplayName, ClientID, Region, OrgID string
	TokenURL, Scopes, AuthStyle, Params, APIBaseURL string
	// An authorization-code account's.
	AuthURL, AuthParams, DefaultLifetime string
	// RedirectURI is the one to register with such a provider.
	RedirectURI   string
	SecretExpires string
	// Link is set on a connect link's form: where it is sent, and until
	// when it works. Its account id and display name are the link's.
	Link, LinkExpires string
	formErrors
}

// linkKind is one kind of account the Hub links: its form's title and
// fields, and where a rejection of its secret is shown.
type linkKind struct {
	Title, SecretField, Rejected string
	Fields                       []string
}

var linkKinds = map[string]linkKind{
	"jumpcloud": {Title: "a JumpCloud service account", SecretField: "client_secret",
		Rejected: "JumpCloud rejected this Client ID and Client Secret; check both, and the API Region (an EU or India service account is unknown in the US region).",
		Fields:   []string{"account_id", "display_name", "client_id", "client_secret", "region", "org_id", "secret_expires"}},
	"jumpcloud-api-key": {Title: "a JumpCloud API key", SecretField: "api_key",
		Rejected: "JumpCloud rejected this API key (or the Organization ID): check both, the API Region, and that the key was not regenerated.",
		Fields:   []string{"account_id", "display_name", "api_key", "region", "org_id"}},
	"oauth2": {Title: "OAuth 2.0 client credentials", SecretField: "client_secret",
		Rejected: "The token endpoint rejected this Client ID and Client Secret; check both, and the scopes.",
		Fields: []string{"account_id", "display_name", "token_url", "client_id", "client_secret", "scopes", "endpoint_params",
			"api_base_url", "secret_expires"}},
	"oauth2-code": {Title: "an account whose users sign in by redirect (OAuth 2.0)", SecretField: "client_secret",
		Fields: []string{"account_id", "display_name", "authorization_url", "token_url", "client_id", "client_secret", "scopes",
			"authorization_params", "api_base_url", "default_token_lifetime", "secret_expires"}},
}

// linkPage is the form of the kind ?kind= names (a JumpCloud service
// account by default), with links to the others.
func (h *Hub) linkPage(w http.ResponseWriter, r *http.Request, s *session, _ *gate.Call) error {
	f := linkForm{Kind: r.URL.Query().Get("kind"), Region: "us", AuthStyle: "header", RedirectURI: h.url() + signin.CallbackPath}
	if _, ok := linkKinds[f.Kind]; !ok {
		f.Kind = "jumpcloud"
	}
	h.render(w, http.StatusOK, "link", signedInPage(s, f.Title(), f))
	return nil
}

// link is "Connect" on the admin's form: the account's page once linked.
func (h *Hub) link(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	show := func(f linkForm, code int) { h.render(w, code, "link", signedInPage(s, f.Title(), f)) }
	f := readLinkForm(r)
	if f.Kind == "oauth2-code" {
		return h.beginSignIn(w, r, c, f, show)
	}
	a, err := h.connectAccount(w, r, c, f, show)
	if err != nil {
		return err
	}
	done(w, r, "/accounts/"+accountID(a), "linked")
	return nil
}

// readLinkForm is a link form as sent, but for its secret.
func readLinkForm(r *http.Request) linkForm {
	v := func(name string) string { return strings.TrimSpace(r.PostFormValue(name)) }
	return linkForm{
		Kind: v("kind"), AccountID: v("account_id"), DisplayName: v("display_name"), ClientID: v("client_id"),
		Region: v("region"), OrgID: v("org_id"), TokenURL: v("token_url"), Scopes: v("scopes"), AuthStyle: v("auth_style"),
		Params: v("endpoint_params"), APIBaseURL: v("api_base_url"), SecretExpires: v("secret_expires"),
		AuthURL: v("authorization_url"), AuthParams: v("authorization_params"), DefaultLifetime: v("default_token_lifetime"),
	}
}

// connectAccount is "Connect": CreateAccount, which proves the credentials
// before it stores anything, from form f and the secret sent with it. A
// refusal that the form can help with is shown on it (show), with what to
// fix next to its field and nothing kept: the error it returns then is
// rendered.
func (h *Hub) connectAccount(w http.ResponseWriter, r *http.Request, c *gate.Call, f linkForm, show func(linkForm, int)) (*credbrokerv1.Account, error) {
	kind, known := linkKinds[f.Kind]
	req := &credbrokerv1.CreateAccountRequest{AccountId: f.AccountID, Account: &credbrokerv1.Account{DisplayName: f.DisplayName}}
	var err error
	switch {
	case !known:
		f.Kind, kind = "jumpcloud", linkKinds["jumpcloud"]
		err = invalidField("kind", "Choose the kind of account to link.")
	case f.Kind != "oauth2" && regions[f.Region] == credbrokerv1.Region_REGION_UNSPECIFIED:
		err = invalidField("region", "Choose the region of the console you sign in to (console.jumpcloud.com is US, console.eu.jumpcloud.com is EU, console.in.jumpcloud.com is India).")
	}
	if err == nil {
		req.SecretExpireTime, err = formDay("secret_expires", f.SecretExpires)
	}
	if err == nil {
		err = f.credentials(req, r.PostFormValue(kind.SecretField))
	}
	var resp *credbrokerv1.CreateAccountResponse
	if err == nil {
		resp, err = h.api.Accounts.CreateAccount(gate.WithCall(r.Context(), c), req)
	}
	if err == nil {
		return resp.GetAccount(), nil
	}
	fields := map[string]place{
		"secret_expire_time":    {field: "secret_expires"},
		"CREDENTIALS_REJECTED":  {field: kind.SecretField, say: kind.Rejected},
		"REGION_NOT_CONFIGURED": {field: "region"},
		"AlreadyExists":         {field: "account_id"},
	}
	if f.Kind == "oauth2" { // the token endpoint is the admin's to get right
		fields["PROVIDER_UNAVAILABLE"] = place{field: "token_url", say: "This did not answer as a token endpoint does: check the Token URL."}
		fields["PROVIDER_REDIRECTED"] = place{field: "token_url", say: "This answered with a redirect: give the token endpoint's own URL."}
	}
	fe, ok := placeError(err, fields)
	if !ok {
		return nil, err
	}
	f.formErrors = fe.only(kind.Fields...)
	show(f, httpCode(err))
	return nil, rendered{err}
}

// SignInOnly: a connect link's form of an account whose users sign in by
// redirect, whose provider the admin chose: its user only signs in.
func (f linkForm) SignInOnly() bool { return f.Link != "" && f.Kind == "oauth2-code" }

// Host is the host of the form's authorization URL.
func (f linkForm) Host() string {
	if u, err := url.Parse(f.AuthURL); err == nil {
		return u.Host
	}
	return ""
}

// OAuth: the form is of a generic OAuth 2.0 provider.
func (f linkForm) OAuth() bool { return f.Kind == "oauth2" || f.Kind == "oauth2-code" }

// Title is the form's.
func (f linkForm) Title() string { return "Link " + linkKinds[f.Kind].Title }

// regions are the JumpCloud regions a form names.
var regions = map[string]credbrokerv1.Region{"us": credbrokerv1.Region_REGION_US, "eu": credbrokerv1.Region_REGION_EU, "in": credbrokerv1.Region_REGION_IN}

// credentials sets req's credentials of the form's kind, with sec, the
// secret sent (never kept in the form).
func (f *linkForm) credentials(req *credbrokerv1.CreateAccountRequest, sec string) error {
	switch f.Kind {
	case "jumpcloud":
		req.Credentials = &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: f.ClientID, ClientSecret: sec, Region: regions[f.Region], OrgId: f.OrgID,
		}}
	case "jumpcloud-api-key":
		req.Credentials = &credbrokerv1.CreateAccountRequest_JumpcloudApiKey{JumpcloudApiKey: &credbrokerv1.JumpCloudAPIKeyCredentials{
			ApiKey: sec, Region: regions[f.Region], OrgId: f.OrgID,
		}}
	default:
		params, err := formParams("endpoint_params", f.Params)
		if err != nil {
			return err
		}
		req.Credentials = &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{
			TokenUrl: f.TokenURL, ClientId: f.ClientID, ClientSecret: sec, Scopes: words(f.Scopes),
			AuthStyle: authStyle(f.AuthStyle), EndpointParams: params, ApiBaseUrl: f.APIBaseURL,
		}}
	}
	return nil
}
