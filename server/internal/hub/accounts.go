package hub

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/gate"
)

// accountsPageSize is how many accounts a page lists; recentEvents, how
// many audit events an account's page shows.
const (
	accountsPageSize = 50
	recentEvents     = 20
)

// accountRow is one account as the Accounts page shows it: in words, from
// the API's Account, which never holds a secret.
type accountRow struct {
	ID, DisplayName, Kind, Region, State, StateWords, Expires, LastToken string
}

var (
	kindWords = map[credbrokerv1.Provider]string{
		credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT: "JumpCloud service account",
		credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY:         "JumpCloud API key",
		credbrokerv1.Provider_PROVIDER_OAUTH2_CLIENT_CREDENTIALS: "OAuth 2.0 client credentials",
		credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE: "OAuth 2.0 sign-in by redirect",
	}
	regionWords = map[credbrokerv1.Region]string{
		credbrokerv1.Region_REGION_US: "US",
		credbrokerv1.Region_REGION_EU: "EU",
		credbrokerv1.Region_REGION_IN: "India",
	}
	// states are the Accounts page's filters, as its URL names them.
	states = map[string]credbrokerv1.AccountState{
		"active":          credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE,
		"degraded":        credbrokerv1.AccountState_ACCOUNT_STATE_DEGRADED,
		"needs_attention": credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION,
	}
	stateWords = map[credbrokerv1.AccountState]string{
		credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE:          "Active",
		credbrokerv1.AccountState_ACCOUNT_STATE_DEGRADED:        "Degraded",
		credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION: "Needs attention",
	}
)

func (h *Hub) accountsPage(w http.ResponseWriter, r *http.Request, s *session, c *gate.Call) error {
	q := r.URL.Query()
	state := q.Get("state")
	want, known := states[state]
	if state != "" && !known {
		return status.Error(codes.InvalidArgument, "state must be active, degraded or needs_attention")
	}
	resp, err := h.api.Accounts.ListAccounts(gate.WithCall(r.Context(), c), &credbrokerv1.ListAccountsRequest{
		PageSize: accountsPageSize, PageToken: q.Get("page"), State: want,
	})
	if err != nil {
		return err
	}
	list := accountList{State: state}
	for _, a := range resp.GetAccounts() {
		list.Accounts = append(list.Accounts, h.row(a))
	}
	if tok := resp.GetNextPageToken(); tok != "" {
		next := url.Values{"page": {tok}}
		if state != "" {
			next.Set("state", state)
		}
		list.Next = "/accounts?" + next.Encode()
	}
	p := signedInPage(s, "Accounts", list)
	p.Notice = notices[q.Get("done")]
	h.render(w, http.StatusOK, "accounts", p)
	return nil
}

// accountList is the Accounts page's.
type accountList struct {
	State    string
	Accounts []accountRow
	Next     string
}

// row is an account in words.
func (h *Hub) row(a *credbrokerv1.Account) accountRow {
	r := accountRow{
		ID: accountID(a), DisplayName: a.GetDisplayName(), Kind: kindWords[a.GetProvider()], Region: regionWords[a.GetRegion()],
		State: strings.ToLower(strings.TrimPrefix(a.GetState().String(), "ACCOUNT_STATE_")), StateWords: stateWords[a.GetState()],
	}
	if r.StateWords == "" {
		r.StateWords = "No token yet"
	}
	if why := reasonWords(a); why != "" {
		r.StateWords += ": " + why
	}
	now := h.cfg.Now()
	switch t := a.GetCredentialsExpireTime(); {
	case t == nil:
		r.Expires = "never"
	case !now.Before(t.AsTime()):
		r.Expires = "expired " + day(t)
	case t.AsTime().Sub(now) <= h.cfg.ExpiryWarning:
		r.Expires = fmt.Sprintf("%s (in %s)", day(t), until(t.AsTime().Sub(now)))
	default:
		r.Expires = day(t)
	}
	r.LastToken = when(a.GetLastTokenTime())
	return r
}

// reasonWords says why an account is in its state, as an admin would.
func reasonWords(a *credbrokerv1.Account) string {
	who, what := "the provider", "the client credentials"
	switch a.GetProvider() {
	case credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT:
		who, what = "JumpCloud", "the client secret"
	case credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY:
		who, what = "JumpCloud", "the API key"
	}
	switch a.GetStateReason() {
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED:
		return who + " rejected " + what
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_PROVIDER_UNAVAILABLE:
		return who + " could not be reached, or failed; the broker retries"
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_SECRET_EXPIRED:
		return "every secret has expired; add a new one"
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_SECRET_EXPIRING:
		return "its secrets expire soon; add a new one"
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_INTEGRITY_CHECK_FAILED:
		return "a stored record of it was changed outside the broker; delete and link it again"
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_PROVIDER_REDIRECTED:
		return who + " answered with a redirect; check its URLs"
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_REFRESH_TOKEN_REVOKED:
		return who + " no longer accepts its sign-in; reconnect it"
	case credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_BROKER_FAULT:
		return "a fault inside the broker; see its log"
	}
	return ""
}

// accountID is an account's id, from its resource name.
func accountID(a *credbrokerv1.Account) string { return strings.TrimPrefix(a.GetName(), "accounts/") }

// day and when say a time as the pages do (UTC); "" if unset.
func day(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(time.DateOnly)
}

func when(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format("2006-01-02 15:04:05 UTC")
}

// until says a duration in days, or hours within two days.
func until(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
	return fmt.Sprintf("%d hours", int(d.Hours()))
}
