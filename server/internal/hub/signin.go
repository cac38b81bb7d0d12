package hub

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/signin"
)

// signInCookie binds a sign-in at a provider to the browser that started
// it: one a sign-in (its name ends in a random id), so that sign-ins in
// two tabs do not undo each other. It is SameSite=Lax, unlike the
// session's: the provider sends the browser back from its own site, and a
// Strict cookie would stay behind.
func (h *Hub) signInCookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode}
}

// signInCookiePrefix starts the name of every sign-in cookie.
func (h *Hub) signInCookiePrefix() string {
	if h.secure {
		return "__Host-credbroker_signin_"
	}
	return "credbroker_signin_"
}

// signInCookies are the request's sign-in cookies.
func (h *Hub) signInCookies(r *http.Request) []*http.Cookie {
	var all []*http.Cookie
	for _, c := range r.Cookies() {
		if strings.HasPrefix(c.Name, h.signInCookiePrefix()) {
			all = append(all, c)
		}
	}
	return all
}

// endSignIns clears the browser's sign-in cookies (on sign-out): a sign-in
// it started cannot be finished any more.
func (h *Hub) endSignIns(w http.ResponseWriter, r *http.Request) {
	for _, c := range h.signInCookies(r) {
		http.SetCookie(w, h.signInCookie(c.Name, "", -1))
	}
}

// beginSignIn starts linking an authorization-code account from form f:
// its settings are checked (a problem is shown next to its field, with
// show), then the browser goes to the provider's sign-in page.
func (h *Hub) beginSignIn(w http.ResponseWriter, r *http.Request, c *gate.Call, f linkForm, show func(linkForm, int)) error {
	kind := linkKinds[f.Kind]
	in := &credbrokerv1.OAuth2AuthorizationCode{
		AuthorizationUrl: f.AuthURL, TokenUrl: f.TokenURL, ClientId: f.ClientID, ClientSecret: r.PostFormValue(kind.SecretField),
		Scopes: words(f.Scopes), ApiBaseUrl: f.APIBaseURL, AuthStyle: authStyle(f.AuthStyle),
	}
	expire, err := formDay("secret_expires", f.SecretExpires)
	if err == nil {
		in.AuthorizationParams, err = formParams("authorization_params", f.AuthParams)
	}
	if err == nil && f.DefaultLifetime != "" {
		d, perr := time.ParseDuration(f.DefaultLifetime)
		if perr != nil {
			err = invalidField("default_token_lifetime", "Write a duration such as 1h or 30m.")
		}
		in.DefaultTokenLifetime = durationpb.New(d)
	}
	var to, cookie string
	if err == nil {
		na, verr := api.NewAuthorizedAccount(f.AccountID, f.DisplayName, in, expire)
		if err = verr; err == nil {
			c.Resource = "accounts/" + na.ID
			to, cookie, err = h.signin.Begin(signin.Start{Account: na, Principal: c.Principal, HubURL: h.url()}, c.ChangeEvent(c.Resource, ""))
		}
	}
	if err != nil {
		fe, ok := placeError(err, map[string]place{"secret_expire_time": {field: "secret_expires"}, "AlreadyExists": {field: "account_id"}})
		if !ok {
			return err
		}
		f.formErrors, f.RedirectURI = fe.only(kind.Fields...), h.url()+signin.CallbackPath
		show(f, httpCode(err))
		return rendered{err}
	}
	h.goSignIn(w, f.AccountID, to, cookie)
	return nil
}

// goSignIn sends the browser on to the provider's sign-in page, to, with
// the cookie that binds the sign-in to it: by a link on a page that names
// the provider, since the Hub's pages may send forms only to the Hub
// (form-action 'self' covers the redirects that follow a form).
func (h *Hub) goSignIn(w http.ResponseWriter, accountID, to, cookie string) {
	id := make([]byte, 6)
	_, _ = rand.Read(id)
	http.SetCookie(w, h.signInCookie(h.signInCookiePrefix()+hex.EncodeToString(id), cookie, int(signin.TTL.Seconds())))
	host := to
	if u, err := url.Parse(to); err == nil {
		host = u.Host
	}
	h.render(w, http.StatusOK, "signin-go", page{Title: "Sign in at " + host, Data: signInAt{AccountID: accountID, Host: host, URL: to}})
}

// signInAt is the page that sends the browser to the provider.
type signInAt struct {
	AccountID, Host, URL string // URL as html/template filters links
}

// reconnect signs the account's user in at the provider again, for new
// tokens; the account keeps its name, secrets and grants.
func (h *Hub) reconnect(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	id := r.PathValue("id")
	accountName(r, c)
	to, cookie, err := h.signin.Begin(signin.Start{Reconnect: id, Principal: s.Principal, HubURL: h.url()}, c.ChangeEvent(c.Resource, ""))
	if err != nil {
		return err
	}
	h.goSignIn(w, id, to, cookie)
	return nil
}

// signedInAt is the page after a sign-in: what was linked.
type signedInAt struct {
	AccountID string
	Reconnect bool
}

// callback is where the provider sends the browser back: the sign-in its
// state names is taken (once), checked against the browser's cookie, and
// finished as a call of whoever started it, checked anew; the page says
// what was linked, or why nothing was. Its answer may not be cached.
func (h *Hub) callback(w http.ResponseWriter, r *http.Request) {
	const method = "hub: sign-in callback"
	q := r.URL.Query()
	cookies := h.signInCookies(r)
	values := make([]string, len(cookies))
	for i, c := range cookies {
		values[i] = c.Value
	}
	p, match, err := h.signin.Take(q.Get("state"), values)
	if match >= 0 { // this sign-in's cookie has done its job
		http.SetCookie(w, h.signInCookie(cookies[match].Name, "", -1))
	}
	var c *gate.Call
	var link *connect.Link
	switch {
	case err != nil:
		c, err = h.gate.AuthorizeLink(r, method, func() (string, error) { return "", err })
	case p.ConnectHash != "": // started with a connect link, which must still work
		c, err = h.gate.AuthorizeLink(r, method, func() (string, error) {
			l, err := h.links.OpenHash(p.ConnectHash)
			if err == nil {
				l, err = h.links.Claim(l)
			}
			link = &l
			return p.Principal, err
		})
	default:
		c, err = h.gate.AuthorizeSession(r, method, gate.Admin, p.Principal, "accounts/"+p.AccountID)
	}
	if err == nil {
		if code := q.Get("error"); code != "" {
			err = h.signin.ProviderError(p, code, q.Get("error_description"))
			c.Detail = "the provider said " + err.(*signin.ProviderError).Code
		} else {
			_, err = h.signin.Finish(r.Context(), p, q.Get("code"), c.ChangeEvent("accounts/"+p.AccountID, ""))
		}
		if link != nil {
			h.linkUsed(*link, c, err)
		}
	}
	if err = h.finish(r, c, err); err != nil {
		code, msg := httpStatus(w, err)
		h.render(w, code, "error", page{Title: "Nothing was linked", Message: msg})
		return
	}
	how := "linked"
	switch {
	case link != nil:
		how = "connected"
	case p.Reconnect:
		how = "reconnected"
	}
	// Away from the code and state: a reload or Back shows the outcome
	// again instead of replaying them, and no history entry holds them.
	http.Redirect(w, r, "/signed-in?"+url.Values{"account": {p.AccountID}, "how": {how}}.Encode(), http.StatusSeeOther)
}

// signedInResult says what a sign-in linked, in fixed words: its URL names
// only an account id and how.
func (h *Hub) signedInResult(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id, how := q.Get("account"), q.Get("how")
	if !api.ValidAccountID(id) || (how != "linked" && how != "reconnected" && how != "connected") {
		h.render(w, http.StatusNotFound, "error", page{Title: "Not found", Message: "There is nothing to show here."})
		return
	}
	if how == "connected" {
		h.render(w, http.StatusOK, "connected", page{Title: "Linked", Data: id})
		return
	}
	h.render(w, http.StatusOK, "signed-in", page{Title: "Linked", Data: signedInAt{AccountID: id, Reconnect: how == "reconnected"}})
}

// authStyle is a form's client authentication.
func authStyle(v string) credbrokerv1.AuthStyle {
	if v == "body" {
		return credbrokerv1.AuthStyle_AUTH_STYLE_BODY
	}
	return credbrokerv1.AuthStyle_AUTH_STYLE_HEADER
}

// formParams reads "name=value" lines.
func formParams(field, text string) (map[string]string, error) {
	params := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, invalidField(field, "Write one name=value a line.")
		}
		params[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return params, nil
}
