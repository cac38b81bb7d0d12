package hub

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/gate"
)

// webhookList is the Webhooks page's: the endpoints and how their
// deliveries go, the signing secret of the one just created (shown once),
// and the form to create one.
type webhookList struct {
	Hooks   []webhookRow
	Next    string
	Created *createdWebhook
	Form    webhookForm
	// Kinds are the event kinds the form offers.
	Kinds []kindChoice
}

type webhookRow struct {
	ID, URL, Kinds, Accounts, Description string
	Failures                              int32
	NextAttempt, LastAttempt              string
	Failing                               bool
}

type createdWebhook struct{ ID, Secret string }

// webhookForm is the "Add a webhook" form as sent.
type webhookForm struct {
	WebhookID, URL, Accounts, Description string
	Kinds                                 map[string]bool
	formErrors
}

type kindChoice struct{ Value, Label string }

// eventKinds are the kinds the form offers, as the CLI spells them.
var eventKinds = func() []kindChoice {
	var ks []kindChoice
	for v := int32(1); ; v++ {
		name, ok := credbrokerv1.EventKind_name[v]
		if !ok {
			return ks
		}
		word := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "EVENT_KIND_"), "_", "-"))
		ks = append(ks, kindChoice{Value: word, Label: strings.ReplaceAll(word, "-", " ")})
	}
}()

func (h *Hub) webhooksPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	return h.showWebhooks(w, r, s, c, http.StatusOK, webhookList{})
}

func (h *Hub) showWebhooks(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call, code int, l webhookList) error {
	resp, err := h.api.Webhooks.ListWebhooks(gate.WithCall(r.Context(), c), &credbrokerv1.ListWebhooksRequest{PageSize: accountsPageSize, PageToken: r.URL.Query().Get("page")})
	if err != nil {
		return err
	}
	for _, hook := range resp.GetWebhooks() {
		d := hook.GetDelivery()
		row := webhookRow{
			ID: strings.TrimPrefix(hook.GetName(), "webhooks/"), URL: hook.GetUrl(), Description: hook.GetDescription(),
			Kinds: "all", Accounts: "all", Failures: d.GetFailedAttempts(), NextAttempt: when(d.GetNextAttemptTime()), Failing: d.GetFailedAttempts() > 0,
		}
		if len(hook.GetKinds()) > 0 {
			var ks []string
			for _, k := range hook.GetKinds() {
				ks = append(ks, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k.String(), "EVENT_KIND_"), "_", " ")))
			}
			row.Kinds = strings.Join(ks, ", ")
		}
		if len(hook.GetAccounts()) > 0 {
			row.Accounts = strings.Join(hook.GetAccounts(), ", ")
		}
		if as := d.GetLastAttempts(); len(as) > 0 {
			a := as[0]
			outcome := fmt.Sprintf("delivered (%d)", a.GetStatusCode())
			if a.GetError() != "" {
				outcome = a.GetError()
			}
			if a.GetGaveUp() {
				outcome += "; given up"
			}
			row.LastAttempt = when(a.GetTime()) + ": " + outcome
		}
		l.Hooks = append(l.Hooks, row)
	}
	if tok := resp.GetNextPageToken(); tok != "" {
		l.Next = "/webhooks?" + url.Values{"page": {tok}}.Encode()
	}
	l.Kinds = eventKinds
	p := signedInPage(s, "Webhooks", l)
	p.Notice = notices[r.URL.Query().Get("done")]
	h.render(w, code, "webhooks", p)
	return nil
}

// createWebhook adds an endpoint and shows its signing secret, once.
func (h *Hub) createWebhook(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	if err := r.ParseForm(); err != nil {
		return err
	}
	f := webhookForm{
		WebhookID: strings.TrimSpace(r.PostFormValue("webhook_id")), URL: strings.TrimSpace(r.PostFormValue("url")),
		Accounts: strings.TrimSpace(r.PostFormValue("accounts")), Description: strings.TrimSpace(r.PostFormValue("description")),
		Kinds: map[string]bool{},
	}
	hook := &credbrokerv1.Webhook{Url: f.URL, Description: f.Description}
	for _, k := range r.PostForm["kinds"] {
		f.Kinds[k] = true
		hook.Kinds = append(hook.Kinds, credbrokerv1.EventKind(credbrokerv1.EventKind_value["EVENT_KIND_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_"))]))
	}
	for _, a := range strings.Split(f.Accounts, ",") {
		if a = strings.TrimSpace(a); a != "" {
			if !strings.HasPrefix(a, "accounts/") {
				a = "accounts/" + a
			}
			hook.Accounts = append(hook.Accounts, a)
		}
	}
	resp, err := h.api.Webhooks.CreateWebhook(gate.WithCall(r.Context(), c), &credbrokerv1.CreateWebhookRequest{WebhookId: f.WebhookID, Webhook: hook})
	if err != nil {
		fe, ok := placeError(err, map[string]place{"AlreadyExists": {field: "webhook_id"}})
		if !ok {
			return err
		}
		f.formErrors = fe.only("webhook_id", "url", "kinds", "accounts", "description")
		if serr := h.showWebhooks(w, r, s, c, httpCode(err), webhookList{Form: f}); serr != nil {
			return serr
		}
		return rendered{err}
	}
	created := &createdWebhook{ID: strings.TrimPrefix(resp.GetWebhook().GetName(), "webhooks/"), Secret: resp.GetSigningSecret()}
	return h.showWebhooks(w, r, s, c, http.StatusOK, webhookList{Created: created})
}

func (h *Hub) deleteWebhook(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	name := "webhooks/" + r.PathValue("id")
	if api.ValidAccountID(r.PathValue("id")) { // webhook ids are spelled as account ids
		c.Resource = name
	}
	if _, err := h.api.Webhooks.DeleteWebhook(gate.WithCall(r.Context(), c), &credbrokerv1.DeleteWebhookRequest{Name: name}); err != nil {
		return err
	}
	done(w, r, "/webhooks", "webhook-deleted")
	return nil
}
