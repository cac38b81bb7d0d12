package server_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/internal/store"
)

// concurrently makes 4 admins run op 25 times each, all at once, each with
// its own random source (seeded by seed, for reproducible runs).
func concurrently(seed uint64, op func(r *rand.Rand)) {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), seed))
			for range 25 {
				op(r)
			}
		}()
	}
	wg.Wait()
}

// Admins adding and removing an API-key account's keys at the same time
// leave the egress proxy sending the newest key the account holds: every
// change reaches the proxy in the order it was committed.
func TestConcurrentKeyChangesLeaveTheNewestKey(t *testing.T) {
	b := startBroker(t)
	b.linkAPIKey(t, "keyed")
	var pool []string
	for i := range 6 {
		k := fmt.Sprintf("canary-ROTATED-KEY-%d-5f1c", i)
		b.fake.SetAPIKey(k, orgID)
		pool = append(pool, k)
	}
	ctx := context.Background()
	concurrently(7, func(r *rand.Rand) {
		k := pool[r.IntN(len(pool))]
		if r.IntN(2) == 0 {
			_, _ = b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/keyed", Secret: k})
		} else {
			_, _ = b.accounts.RemoveAccountSecret(ctx, &credbrokerv1.RemoveAccountSecretRequest{Name: "accounts/keyed", SecretId: secretID(k)})
		}
	})
	a := b.account(t, "keyed")
	newest := a.GetSecrets()[0]
	for _, s := range a.GetSecrets() {
		if s.GetCreateTime().AsTime().After(newest.GetCreateTime().AsTime()) {
			newest = s
		}
	}
	resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("proxied call: HTTP %d %s", resp.StatusCode, body)
	}
	if sent := b.fake.LastAPIRequest().Header.Get("x-api-key"); secretID(sent) != newest.GetSecretId() {
		t.Fatalf("the proxy sent the key %s; the account's newest is %s (of %v)", secretID(sent), newest.GetSecretId(), secretIDs(a))
	}
}

// Admins linking and deleting the same accounts at the same time leave the
// token cache with exactly the accounts that are stored: a deleted account
// is never brought back to life in memory, where the refresher would keep
// renewing its tokens.
func TestConcurrentLinksAndDeletesLeaveNoGhost(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	concurrently(11, func(r *rand.Rand) {
		id := fmt.Sprintf("churn-%d", r.IntN(3))
		if r.IntN(2) == 0 {
			_, _ = b.accounts.CreateAccount(ctx, jumpCloudRequest(id))
		} else {
			_, _ = b.accounts.DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: "accounts/" + id})
		}
	})
	list, err := b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	_, scrape := b.opsGet(t, "/metrics")
	cached := 0
	for _, m := range regexp.MustCompile(`(?m)^credbroker_accounts\{state="[a-z_]+"\} (\d+)$`).FindAllStringSubmatch(scrape, -1) {
		n, _ := strconv.Atoi(m[1])
		cached += n
	}
	if !regexp.MustCompile(`credbroker_accounts\{`).MatchString(scrape) {
		t.Fatalf("no credbroker_accounts in the scrape:\n%s", scrape)
	}
	if cached != len(list.GetAccounts()) {
		t.Fatalf("the token cache holds %d accounts, the store %d", cached, len(list.GetAccounts()))
	}
}

// Changes committed past the broker's services, as another process on the
// same storage would commit them, reach its in-memory state from the
// stream of committed changes: a withdrawn grant and a revoked caller key
// are refused.
func TestCommittedChangesReachTheCopies(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	b.token(t, "acme")
	st := server.StoreOf(b.srv)
	ctx := context.Background()
	eventually := func(what string, code codes.Code) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if status.Code(err) == code {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: GetToken still answers %v, want %v", what, err, code)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := st.UpdateAccount("acme", func(a *store.Account) error { a.Grants = nil; return nil }, store.AuditEvent{Time: time.Now(), Method: "test"}); err != nil {
		t.Fatal(err)
	}
	eventually("after the grant was withdrawn", codes.PermissionDenied)
	b.grant(t, "acme", svcPrincipal)
	b.token(t, "acme")
	if _, err := st.UpdateCallerKey("svc", func(k *store.CallerKey) { k.RevokeTime = time.Now() }, nil, store.AuditEvent{Time: time.Now(), Method: "test"}); err != nil {
		t.Fatal(err)
	}
	eventually("after the caller key was revoked", codes.Unauthenticated)
}
