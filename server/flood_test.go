package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// retryInfo is the RetryInfo delay of a status, or 0 if it has none.
func retryInfo(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// errorMetadata is the metadata of a status's ErrorInfo.
func errorMetadata(st *status.Status) map[string]string {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetMetadata()
		}
	}
	return nil
}

// eventually polls cond until it holds, failing the test after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// A caller cannot flip an API-key account to NEEDS_ATTENTION by proxying to
// a path that answers 401: the broker checks the key with GET
// /organizations, at most once per interval, and only a rejection there
// changes the state.
func TestProxied401DoesNotFlipAPIKeyAccount(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.MinTTLRefreshInterval = time.Hour
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")
	b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/v2/unauthorized") {
			http.Error(w, `{"message":"Unauthorized"}`, http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{}`)
	}))
	state := func() *credbrokerv1.Account {
		resp, err := b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/keyed"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAccount()
	}
	checks := b.fake.OrganizationChecks()
	for i := range 50 {
		if resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/unauthorized/"+strconv.Itoa(i), b.keys.svc, nil, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("HTTP %d %s, want the API's 401", resp.StatusCode, body)
		}
		if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
			t.Fatalf("after %d proxied 401s: %v", i+1, a)
		}
	}
	eventually(t, "the key's check", func() bool { return b.fake.OrganizationChecks() > checks })
	if n := b.fake.OrganizationChecks() - checks; n != 1 {
		t.Fatalf("50 proxied 401s made %d checks of the key, want 1 (one per interval)", n)
	}
	if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
		t.Fatalf("after the key's check: %v", a)
	}

	// The key really is rejected now: once the interval has passed (here:
	// a restart), the next 401 is confirmed and the account needs attention.
	b.fake.RevokeAPIKey(apiKey)
	b = b.restart(t)
	b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
	eventually(t, "NEEDS_ATTENTION", func() bool {
		a := state()
		return a.GetState() == credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION &&
			a.GetStateReason() == credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED
	})
}
