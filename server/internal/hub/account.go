package hub

import (
	"cmp"
	"context"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/gate"
)

// accountDetail is the Account page's: the account in words, its secrets
// (described, never shown), grants and recent audit events, and its forms
// as last sent, with what to fix.
type accountDetail struct {
	accountRow
	ClientID, OrgID, TokenURL, APIBaseURL, Scopes, Created string
	// An account whose users sign in by redirect: where, and with what.
	AuthURL, AuthParams string
	ProviderError       string
	Secrets             []secretRow
	Grants              []grantRow
	Events              []eventRow
	// MaxSecrets: the account holds two secrets, so one must go before
	// another is added.
	MaxSecrets bool
	// Reconnects: its users sign in by redirect, which Reconnect does again.
	Reconnects bool
	SecretForm secretForm
	GrantForm  grantForm
}

type secretRow struct{ ID, Created, Expires, LastUsed, Rejected string }

type grantRow struct{ Principal, Limits, Created, Creator string }

// secretForm is the "Add a secret" form as sent, never its secret.
type secretForm struct {
	Expires string
	formErrors
}

type grantForm struct {
	Principal, Methods, PathPrefixes string
	formErrors
}

// notices confirm what a form did, by the name the redirect after it
// gives (so that no form value reaches a URL).
var notices = map[string]string{
	"linked":          "The account is linked: the provider accepted its credentials.",
	"secret-added":    "The new secret is added: the provider accepted it. The broker now uses it first.",
	"secret-removed":  "The secret is removed.",
	"grant-added":     "The grant is added.",
	"grant-removed":   "The grant is removed.",
	"account-deleted": "The account is deleted.",
	"key-revoked":     "The caller key is revoked.",
	"key-deleted":     "The caller key is deleted: its name may be given to a new key.",
	"link-revoked":    "The connect link is revoked: opened, it says so.",
	"webhook-deleted": "The webhook is deleted: nothing more is delivered to it.",
}

func (h *Hub) accountPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.showAccount(w, r, s, c, http.StatusOK, accountDetail{})
}

// showAccount renders account {id}'s page with code, keeping the forms of
// d (a form sent with something to fix).
func (h *Hub) showAccount(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call, code int, d accountDetail) error {
	ctx := gate.WithCall(r.Context(), c)
	name := accountName(r, c)
	got, err := h.api.Accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: name})
	if err != nil {
		return err
	}
	a := got.GetAccount()
	d.accountRow = h.row(a)
	d.ClientID, d.OrgID, d.TokenURL, d.APIBaseURL = a.GetClientId(), a.GetOrgId(), a.GetTokenUrl(), a.GetApiBaseUrl()
	d.Scopes, d.Created = strings.Join(a.GetScopes(), " "), when(a.GetCreateTime())
	d.AuthURL = a.GetAuthorizationUrl()
	for _, k := range slices.Sorted(maps.Keys(a.GetAuthorizationParams())) {
		d.AuthParams = strings.TrimSpace(d.AuthParams + " " + k + "=" + a.GetAuthorizationParams()[k])
	}
	if e := a.GetLastError(); e != nil && e.GetProviderError() != "" {
		d.ProviderError = strings.TrimSpace(e.GetProviderError() + ": " + e.GetProviderErrorDescription())
	}
	for _, sec := range a.GetSecrets() {
		row := secretRow{ID: sec.GetSecretId(), Created: when(sec.GetCreateTime()), Expires: cmp.Or(day(sec.GetExpireTime()), "never"), LastUsed: when(sec.GetLastUseTime())}
		if rej := sec.GetRejected(); rej != nil {
			row.Rejected = rej.GetMessage() + " (" + when(rej.GetTime()) + ")"
		}
		d.Secrets = append(d.Secrets, row)
	}
	d.MaxSecrets = len(d.Secrets) >= 2
	d.Reconnects = a.GetProvider() == credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE
	for _, g := range a.GetGrants() {
		row := grantRow{Principal: g.GetPrincipal(), Created: when(g.GetCreateTime()), Creator: g.GetCreator(), Limits: "tokens and any call through the proxy"}
		if len(g.GetHttpMethods())+len(g.GetPathPrefixes()) > 0 {
			row.Limits = "only " + strings.Join(append(g.GetHttpMethods(), g.GetPathPrefixes()...), " ") + " through the proxy"
		}
		d.Grants = append(d.Grants, row)
	}
	if d.Events, _, err = h.events(ctx, &credbrokerv1.ListAuditEventsRequest{Account: name, PageSize: recentEvents}); err != nil {
		return err
	}
	p := signedInPage(s, d.ID, d)
	p.Notice = notices[r.URL.Query().Get("done")]
	h.render(w, code, "account", p)
	return nil
}

// formFailed shows err on account {id}'s page next to the form's field it
// is about (placed in d by place), or on the error page if no form can
// help with it.
func (h *Hub) formFailed(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call, err error, fields map[string]place, d accountDetail, place func(*accountDetail, formErrors)) error {
	fe, ok := placeError(err, fields)
	if !ok {
		return err
	}
	place(&d, fe)
	if serr := h.showAccount(w, r, s, c, httpCode(err), d); serr != nil {
		return serr
	}
	return rendered{err}
}

// done goes back to account {id}'s page, saying what was done.
func done(w http.ResponseWriter, r *http.Request, path, notice string) {
	http.Redirect(w, r, path+"?"+url.Values{"done": {notice}}.Encode(), http.StatusSeeOther)
}

func (h *Hub) addSecret(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	f := secretForm{Expires: strings.TrimSpace(r.PostFormValue("expires"))}
	req := &credbrokerv1.AddAccountSecretRequest{Name: accountName(r, c), Secret: r.PostFormValue("secret")}
	var err error
	if req.ExpireTime, err = formDay("expires", f.Expires); err == nil {
		_, err = h.api.Accounts.AddAccountSecret(gate.WithCall(r.Context(), c), req)
	}
	if err != nil {
		return h.formFailed(w, r, s, c, err, map[string]place{
			"expire_time":          {field: "expires"},
			"CREDENTIALS_REJECTED": {field: "secret", say: "The provider rejected this secret, so it was not kept."},
			"AlreadyExists":        {field: "secret"},
		}, accountDetail{}, func(d *accountDetail, fe formErrors) { f.formErrors = fe.only("secret", "expires"); d.SecretForm = f })
	}
	done(w, r, "/accounts/"+r.PathValue("id"), "secret-added")
	return nil
}

func (h *Hub) removeSecret(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	_, err := h.api.Accounts.RemoveAccountSecret(gate.WithCall(r.Context(), c), &credbrokerv1.RemoveAccountSecretRequest{
		Name: accountName(r, c), SecretId: r.PostFormValue("secret_id"),
	})
	if err != nil {
		return h.formFailed(w, r, s, c, err, nil, accountDetail{}, func(d *accountDetail, fe formErrors) {
			d.SecretForm.Error = "The secret was not removed: " + fe.message()
		})
	}
	done(w, r, "/accounts/"+r.PathValue("id"), "secret-removed")
	return nil
}

func (h *Hub) addGrant(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	f := grantForm{
		Principal: strings.TrimSpace(r.PostFormValue("principal")),
		Methods:   strings.TrimSpace(r.PostFormValue("http_methods")), PathPrefixes: strings.TrimSpace(r.PostFormValue("path_prefixes")),
	}
	_, err := h.api.Accounts.AddAccountGrant(gate.WithCall(r.Context(), c), &credbrokerv1.AddAccountGrantRequest{
		Name: accountName(r, c), Principal: f.Principal,
		HttpMethods: words(strings.ToUpper(f.Methods)), PathPrefixes: words(f.PathPrefixes),
	})
	if err != nil {
		// NotFound is of the caller key: the page shown after it reads the
		// account, and says so if that is what is missing.
		return h.formFailed(w, r, s, c, err, map[string]place{"NotFound": {field: "principal"}},
			accountDetail{}, func(d *accountDetail, fe formErrors) {
				f.formErrors = fe.only("principal", "http_methods", "path_prefixes")
				d.GrantForm = f
			})
	}
	done(w, r, "/accounts/"+r.PathValue("id"), "grant-added")
	return nil
}

func (h *Hub) removeGrant(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	_, err := h.api.Accounts.RemoveAccountGrant(gate.WithCall(r.Context(), c), &credbrokerv1.RemoveAccountGrantRequest{
		Name: accountName(r, c), Principal: r.PostFormValue("principal"),
	})
	if err != nil {
		return h.formFailed(w, r, s, c, err, nil, accountDetail{}, func(d *accountDetail, fe formErrors) {
			d.GrantForm.Error = "The grant was not removed: " + fe.message()
		})
	}
	done(w, r, "/accounts/"+r.PathValue("id"), "grant-removed")
	return nil
}

// deleteForm is the page that asks to confirm a deletion.
type deleteForm struct {
	ID, DisplayName string
	formErrors
}

func (h *Hub) deletePage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.showDelete(w, r, s, c, http.StatusOK, formErrors{})
}

func (h *Hub) showDelete(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call, code int, fe formErrors) error {
	got, err := h.api.Accounts.GetAccount(gate.WithCall(r.Context(), c), &credbrokerv1.GetAccountRequest{Name: accountName(r, c)})
	if err != nil {
		return err
	}
	f := deleteForm{ID: accountID(got.GetAccount()), DisplayName: got.GetAccount().GetDisplayName(), formErrors: fe}
	h.render(w, code, "delete", signedInPage(s, "Delete "+f.ID, f))
	return nil
}

// deleteAccount deletes the account once its id is typed again.
func (h *Hub) deleteAccount(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	id, name := r.PathValue("id"), accountName(r, c)
	if r.PostFormValue("confirm") != id {
		err := invalidField("confirm", "Type the account's id, "+id+", to delete it.")
		if serr := h.showDelete(w, r, s, c, http.StatusBadRequest, formErrors{Fields: map[string]string{"confirm": "Type the account's id, " + id + ", to delete it."}}); serr != nil {
			return serr
		}
		return rendered{err}
	}
	if _, err := h.api.Accounts.DeleteAccount(gate.WithCall(r.Context(), c), &credbrokerv1.DeleteAccountRequest{Name: name}); err != nil {
		return err
	}
	done(w, r, "/accounts", "account-deleted")
	return nil
}

// accountName is the resource name of the account a page's URL names,
// which is also what the call is about in the audit trail (unless it is
// not an account id: then the API refuses the call, with no resource).
func accountName(r *http.Request, c *gate.Call) string {
	id := r.PathValue("id")
	if api.ValidAccountID(id) {
		c.Resource = "accounts/" + id
	}
	return "accounts/" + id
}

// words splits a form field's list, written with spaces or commas.
func words(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
}

// formDay is a form's date (YYYY-MM-DD, as a date input sends it) as the
// start of that day in UTC, or nil if empty.
func formDay(field, v string) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	t, err := time.Parse(time.DateOnly, v)
	if err != nil {
		return nil, invalidField(field, "Enter a date as YYYY-MM-DD.")
	}
	return timestamppb.New(t), nil
}

// events are audit events in words, and the next page's token.
func (h *Hub) events(ctx context.Context, req *credbrokerv1.ListAuditEventsRequest) ([]eventRow, string, error) {
	resp, err := h.api.Audit.ListAuditEvents(ctx, req)
	if err != nil {
		return nil, "", err
	}
	rows := make([]eventRow, len(resp.GetEvents()))
	for i, ev := range resp.GetEvents() {
		rows[i] = eventRow{
			Time: when(ev.GetTime()), Principal: ev.GetPrincipal(), Method: ev.GetMethod(), Resource: ev.GetResource(),
			Code: ev.GetCode(), Detail: ev.GetDetail(), Peer: ev.GetPeerAddress(), Token: ev.GetTokenFingerprint(),
		}
		if p := ev.GetProxyCall(); p != nil {
			rows[i].Detail = strings.TrimSpace(rows[i].Detail + " " + p.GetHttpMethod() + " " + p.GetPath() + " → " + strconv.Itoa(int(p.GetStatus())))
		}
	}
	return rows, resp.GetNextPageToken(), nil
}

// eventRow is an audit event as pages show it.
type eventRow struct{ Time, Principal, Method, Resource, Code, Detail, Peer, Token string }
