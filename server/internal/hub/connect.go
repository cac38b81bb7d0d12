package hub

import (
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/signin"
)

// linkKindOf is the link form of a connect link's kind of account.
var linkKindOf = map[string]string{
	string(provider.KindJumpCloudServiceAccount): "jumpcloud",
	string(provider.KindJumpCloudAPIKey):         "jumpcloud-api-key",
	string(provider.KindOAuth2AuthorizationCode): "oauth2-code",
}

// openLink admits a request made with the connect link in its URL as a
// call to method, and returns the link; or renders the page that says why
// the link cannot be used and returns nil.
func (h *Hub) openLink(w http.ResponseWriter, r *http.Request, method string) (*gate.Call, *connect.Link) {
	var l connect.Link
	c, err := h.gate.AuthorizeLink(r, method, func() (string, error) {
		var err error
		l, err = h.links.Open(r.PathValue("secret"))
		return l.Name(), err
	})
	if err != nil {
		h.linkRefused(w, r, c, err)
		return nil, nil
	}
	c.Resource = "accounts/" + l.AccountID
	return c, &l
}

// linkRefused ends call c, refused with err, on the page that says why
// the link cannot be used.
func (h *Hub) linkRefused(w http.ResponseWriter, r *http.Request, c *gate.Call, err error) {
	code, msg := httpStatus(w, h.finish(r, c, err))
	h.render(w, code, "error", page{Title: "This link cannot be used", Message: msg})
}

// connectForm is a connect link's form.
func connectForm(l *connect.Link, secret string) linkForm {
	return linkForm{Kind: linkKindOf[l.Provider], AccountID: l.AccountID, DisplayName: l.DisplayName, Region: "us", Link: "/connect/" + secret,
		LinkExpires: l.ExpireTime.UTC().Format("2006-01-02 15:04 UTC")}
}

// connectPage is what whoever opens a connect link sees: the form of its
// kind of account, for its account, and nothing else.
func (h *Hub) connectPage(w http.ResponseWriter, r *http.Request) {
	c, l := h.openLink(w, r, "connect: link form")
	if l == nil {
		return
	}
	f := connectForm(l, r.PathValue("secret"))
	if l.App != nil {
		f.AuthURL = l.App.AuthURL // only its host is shown
	}
	h.render(w, http.StatusOK, "link", page{Title: f.Title(), Data: f})
	_ = h.finish(r, c, nil)
}

// connectWithLink links the link's account from its form: a refusal is
// shown next to its field, a success on a page that says so and nothing
// more; the link is then used up.
func (h *Hub) connectWithLink(w http.ResponseWriter, r *http.Request) {
	if !h.parseForm(w, r, nil) {
		return
	}
	c, l := h.openLink(w, r, "connect: link an account")
	if l == nil {
		return
	}
	if l.App != nil { // the user signs in at the provider; the way back uses the link
		to, cookie, err := h.signin.Begin(signin.Start{
			Account: accounts.NewAccount{ID: l.AccountID, DisplayName: l.DisplayName}, App: l.App,
			Principal: l.Name(), ConnectHash: l.Hash(), HubURL: h.url(),
		}, c.ChangeEvent(c.Resource, ""))
		if err == nil {
			h.goSignIn(w, l.AccountID, to, cookie)
		}
		if err != nil {
			h.linkRefused(w, r, c, err)
		} else if ferr := h.finish(r, c, nil); ferr != nil {
			h.cfg.Logger.Warn("the audit event of a connect link's sign-in could not be written", "link", l.Name(), "error", ferr)
		}
		return
	}
	claimed, err := h.links.Claim(*l)
	if err != nil {
		h.linkRefused(w, r, c, err)
		return
	}
	l = &claimed
	f := readLinkForm(r)
	link := connectForm(l, r.PathValue("secret"))
	f.Kind, f.AccountID, f.DisplayName, f.Link, f.LinkExpires = link.Kind, link.AccountID, link.DisplayName, link.Link, link.LinkExpires
	a, err := h.connectAccount(w, r, c, f, func(f linkForm, code int) {
		if code == http.StatusConflict { // its account exists: linked by an admin meanwhile
			h.render(w, code, "error", page{Title: "This link cannot be used", Message: "This link's account is linked already: ask your admin."})
			return
		}
		h.render(w, code, "link", page{Title: f.Title(), Data: f})
	})
	h.linkUsed(*l, c, err)
	ferr := h.finish(r, c, unrendered(err))
	switch _, shown := err.(rendered); {
	case err == nil:
		h.render(w, http.StatusOK, "connected", page{Title: "Linked", Data: accountID(a)})
		if ferr != nil { // the account and its event are stored: only the call's own event failed
			h.cfg.Logger.Warn("the audit event of a connect link's use could not be written", "link", l.Name(), "error", ferr)
		}
	case !shown: // a fault no form can help with: the broker's, the storage's
		code, msg := httpStatus(w, ferr)
		h.render(w, code, "error", page{Title: "Nothing was linked", Message: msg})
	}
}

// linkUsed ends the use of claimed link l that linked its account (err
// nil) or failed with err: a refusal of the credentials counts towards
// the link's revocation.
func (h *Hub) linkUsed(l connect.Link, c *gate.Call, err error) {
	if err == nil {
		if uerr := h.links.Used(l, c.Event(0)); uerr != nil {
			h.cfg.Logger.Warn("could not mark a connect link used; its account exists, so it cannot link another", "link", l.Name(), "error", uerr)
		}
		return
	}
	if rerr := h.links.Release(l, reasonOf(status.Convert(unrendered(err))) == credbrokerv1.ErrorReason_CREDENTIALS_REJECTED.String()); rerr != nil {
		h.cfg.Logger.Warn("could not free a connect link after a failed use; it is free again in a few minutes", "link", l.Name(), "error", rerr)
	}
}

// unrendered is err for the gate: the error a rendered page shows.
func unrendered(err error) error {
	if r, ok := err.(rendered); ok {
		return r.error
	}
	return err
}

// linksForm is the admin's Connect links page: the live links, the
// "Create a connect link" form as sent, and the link just created (shown
// once).
type linksForm struct {
	Live                              []liveLink
	AccountID, Kind, DisplayName, TTL string
	// The provider and app of an account whose users sign in by redirect.
	AuthURL, TokenURL, ClientID, Scopes, AuthParams, APIBaseURL string
	formErrors
	Created *createdLink
}

type liveLink struct{ ID, AccountID, Kind, Creator, Expires string }

type createdLink struct{ URL, AccountID, Expires string }

// linkTTLs are the lifetimes the form offers.
var linkTTLs = map[string]time.Duration{"30m": 30 * time.Minute, "2h": 2 * time.Hour, "24h": 24 * time.Hour, "168h": 7 * 24 * time.Hour}

func (h *Hub) connectLinksPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.showLinks(w, r, s, c, http.StatusOK, linksForm{Kind: "jumpcloud", TTL: "30m"})
}

// showLinks renders the Connect links page with the live links and f.
func (h *Hub) showLinks(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call, code int, f linksForm) error {
	resp, err := h.api.Connect.ListConnectSessions(gate.WithCall(r.Context(), c), &credbrokerv1.ListConnectSessionsRequest{})
	if err != nil {
		return err
	}
	for _, cs := range resp.GetConnectSessions() {
		f.Live = append(f.Live, liveLink{
			ID: strings.TrimPrefix(cs.GetName(), connect.PrincipalPrefix), AccountID: cs.GetAccountId(), Kind: kindWords[cs.GetProvider()],
			Creator: cs.GetCreator(), Expires: when(cs.GetExpireTime()),
		})
	}
	p := signedInPage(s, "Connect links", f)
	p.Notice = notices[r.URL.Query().Get("done")]
	h.render(w, code, "connect-links", p)
	return nil
}

// createConnectLink makes a link and shows it, once.
func (h *Hub) createConnectLink(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	v := func(name string) string { return strings.TrimSpace(r.PostFormValue(name)) }
	f := linksForm{
		AccountID: v("account_id"), Kind: v("kind"), DisplayName: v("display_name"), TTL: v("ttl"),
		AuthURL: v("authorization_url"), TokenURL: v("token_url"), ClientID: v("client_id"), Scopes: v("scopes"),
		AuthParams: v("authorization_params"), APIBaseURL: v("api_base_url"),
	}
	req := &credbrokerv1.CreateConnectSessionRequest{AccountId: f.AccountID, DisplayName: f.DisplayName}
	var err error
	switch f.Kind {
	case "jumpcloud":
		req.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT
	case "jumpcloud-api-key":
		req.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY
	case "oauth2-code":
		req.Provider = credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE
		req.Oauth2AuthorizationCode = &credbrokerv1.OAuth2AuthorizationCode{
			AuthorizationUrl: f.AuthURL, TokenUrl: f.TokenURL, ClientId: f.ClientID, ClientSecret: r.PostFormValue("client_secret"),
			Scopes: words(f.Scopes), ApiBaseUrl: f.APIBaseURL,
		}
		req.Oauth2AuthorizationCode.AuthorizationParams, err = formParams("authorization_params", f.AuthParams)
	}
	if ttl, ok := linkTTLs[f.TTL]; ok {
		req.Ttl = durationpb.New(ttl)
	}
	var resp *credbrokerv1.CreateConnectSessionResponse
	if err == nil {
		resp, err = h.api.Connect.CreateConnectSession(gate.WithCall(r.Context(), c), req)
	}
	if err != nil {
		fe, ok := placeError(err, map[string]place{"provider": {field: "kind"}, "AlreadyExists": {field: "account_id"}, "FailedPrecondition": {field: "account_id"}})
		if !ok {
			return err
		}
		f.formErrors = fe.only("account_id", "kind", "display_name", "ttl", "authorization_url", "token_url", "client_id", "client_secret",
			"scopes", "authorization_params", "api_base_url")
		if serr := h.showLinks(w, r, s, c, httpCode(err), f); serr != nil {
			return serr
		}
		return rendered{err}
	}
	cs := resp.GetConnectSession()
	created := &createdLink{URL: resp.GetUrl(), AccountID: cs.GetAccountId(), Expires: when(cs.GetExpireTime())}
	return h.showLinks(w, r, s, c, http.StatusOK, linksForm{Kind: "jumpcloud", TTL: "30m", Created: created})
}

// revokeConnectLink ends a live link.
func (h *Hub) revokeConnectLink(w http.ResponseWriter, r *http.Request, _ *session, c *gate.Call) error {
	if _, err := h.api.Connect.RevokeConnectSession(gate.WithCall(r.Context(), c), &credbrokerv1.RevokeConnectSessionRequest{Name: connect.PrincipalPrefix + r.PathValue("id")}); err != nil {
		return err
	}
	done(w, r, "/connect-links", "link-revoked")
	return nil
}
