package hub

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// accountsPageSize is how many accounts a page lists.
const accountsPageSize = 50

// accountRow is one account as the Accounts page shows it: in words, with
// no secret (none reaches the page: a View holds only sealed values, which
// the page never shows).
type accountRow struct {
	ID, DisplayName, Kind, Region, State, StateWords, Expires, LastToken string
}

// kinds names the kinds of accounts.
var kinds = map[provider.Kind]string{
	provider.KindJumpCloudServiceAccount: "JumpCloud service account",
	provider.KindJumpCloudAPIKey:         "JumpCloud API key",
	provider.KindOAuth2ClientCredentials: "OAuth 2.0 client credentials",
}

var states = map[string]tokens.State{
	"active": tokens.StateActive, "degraded": tokens.StateDegraded, "needs_attention": tokens.StateNeedsAttention,
}

func (h *Hub) accountsPage(w http.ResponseWriter, r *http.Request, s *session, _ *gate.Call) error {
	q := r.URL.Query()
	state, after := q.Get("state"), q.Get("after")
	want, known := states[state]
	if state != "" && !known {
		return status.Error(codes.InvalidArgument, "state must be active, degraded or needs_attention")
	}
	if len(after) > 256 {
		return status.Error(codes.InvalidArgument, "after is too long")
	}
	var keep func(accounts.View) bool
	if state != "" {
		keep = func(v accounts.View) bool { return v.Status.State == want }
	}
	views, more, err := h.accounts.List(after, accountsPageSize, keep)
	if err != nil {
		return err
	}
	p := page{Title: "Accounts", Principal: s.Principal, CSRF: s.csrf, State: state}
	now := h.cfg.Now()
	for _, v := range views {
		p.Accounts = append(p.Accounts, row(v, now))
	}
	if more {
		next := url.Values{"after": {views[len(views)-1].ID}}
		if state != "" {
			next.Set("state", state)
		}
		p.Next = "/accounts?" + next.Encode()
	}
	h.render(w, http.StatusOK, "accounts", p)
	return nil
}

// row is an account in words.
func row(v accounts.View, now time.Time) accountRow {
	cr := v.Credentials
	r := accountRow{ID: v.ID, DisplayName: v.DisplayName, Kind: kinds[cr.Kind], Region: strings.ToUpper(cr.Region), State: string(v.Status.State)}
	if r.Kind == "" {
		r.Kind = string(cr.Kind)
	}
	switch v.Status.State {
	case tokens.StateActive:
		r.StateWords = "Active"
	case tokens.StateDegraded:
		r.StateWords = "Degraded"
	case tokens.StateNeedsAttention:
		r.StateWords = "Needs attention"
	default:
		r.StateWords = "No token yet"
	}
	if f := v.Status.LastError; f != nil && v.Status.State != tokens.StateActive {
		r.StateWords += ": " + f.Message
	}
	switch t := v.Expiry.Time; {
	case t.IsZero():
		r.Expires = "never"
	case !now.Before(t):
		r.Expires = "expired " + t.UTC().Format(time.DateOnly)
	case v.Expiry.Soon:
		r.Expires = fmt.Sprintf("%s (in %s)", t.UTC().Format(time.DateOnly), until(t.Sub(now)))
	default:
		r.Expires = t.UTC().Format(time.DateOnly)
	}
	if t := v.Status.LastTokenTime; !t.IsZero() {
		r.LastToken = t.UTC().Format("2006-01-02 15:04:05 UTC")
	}
	return r
}

// until says a duration in days, or hours within a day.
func until(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
	return fmt.Sprintf("%d hours", int(d.Hours()))
}
