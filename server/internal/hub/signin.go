package hub

import (
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/signin"
)

// signInCookie binds a sign-in at a provider to the browser that started
// it. It is SameSite=Lax, unlike the session's: the provider sends the
// browser back from its own site, and a Strict cookie would stay behind.
func (h *Hub) signInCookie(value string, maxAge int) *http.Cookie {
	name := "credbroker_signin"
	if h.secure {
		name = "__Host-credbroker_signin"
	}
	return &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode}
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
	http.SetCookie(w, h.signInCookie(cookie, int(signin.TTL.Seconds())))
	host := to
	if u, err := url.Parse(to); err == nil {
		host = u.Host
	}
	h.render(w, http.StatusOK, "signin-go", page{Title: "Sign in at " + host, Data: signInAt{AccountID: accountID, Host: host, URL: template.URL(to)}})
}

// signInAt is the page that sends the browser to the provider.
type signInAt struct {
	AccountID, Host string
	URL             template.URL
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
	var cookie string
	if ck, err := r.Cookie(h.signInCookie("", 0).Name); err == nil {
		cookie = ck.Value
	}
	http.SetCookie(w, h.signInCookie("", -1))
	p, err := h.signin.Take(q.Get("state"), cookie)
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
			pcode, pdesc := provider.CallbackError(code, q.Get("error_description"))
			err = &signin.ProviderError{Code: pcode, Description: pdesc}
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
	if link != nil {
		h.render(w, http.StatusOK, "connected", page{Title: "Linked", Data: p.AccountID})
		return
	}
	h.render(w, http.StatusOK, "signed-in", page{Title: "Linked", Data: signedInAt{AccountID: p.AccountID, Reconnect: p.Reconnect}})
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
