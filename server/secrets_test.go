package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/internal/store"
)

const newSecret = "canary-NEW-SECRET-8d3b"

func (b *broker) account(t testing.TB, id string) *credbrokerv1.Account {
	t.Helper()
	resp, err := b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/" + id})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAccount()
}

func secretIDs(a *credbrokerv1.Account) []string {
	var ids []string
	for _, s := range a.GetSecrets() {
		ids = append(ids, s.GetSecretId())
	}
	return ids
}

// The rotation an admin does every 90 days, under continuous load from
// GetToken and proxy callers while tokens are renewed about every second:
// add the new secret, revoke the old one in JumpCloud, remove it from the
// broker. Not one call may fail.
func TestSecretRotationWithoutDowntime(t *testing.T) {
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.RefreshMargin = time.Second
	cfg.Tokens.ScanInterval = 100 * time.Millisecond // renewals on time, even on a busy machine
	cfg.Gate.RateLimit = -1
	b := startWith(t, cfg, fake, logs)
	b.fake.SetTokenTTL(32 * time.Second) // 2 s after JumpCloud's 30 s margin: renewed every second or so
	b.link(t, "acme")
	ctx := context.Background()

	var calls, failures atomic.Int64
	var firstFailure atomic.Value
	fail := func(what string) {
		failures.Add(1)
		firstFailure.CompareAndSwap(nil, what)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := b.proxyClient(nil)
			for {
				select {
				case <-stop:
					return
				default:
				}
				calls.Add(1)
				if i%2 == 0 {
					if _, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(500 * time.Millisecond)}); err != nil {
						fail("GetToken: " + err.Error())
					}
					continue
				}
				req, _ := http.NewRequest(http.MethodGet, b.proxyURL+"/v1/accounts/acme/proxy/v2/systems", nil)
				req.Header.Set("Proxy-Authorization", "Bearer "+b.keys.svc)
				resp, err := client.Do(req)
				if err != nil {
					fail("proxy: " + err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fail("proxy: " + resp.Status + " " + string(body))
				}
			}
		}()
	}
	pause := func() { time.Sleep(1500 * time.Millisecond) } // a renewal or so between steps

	pause()
	requests := b.fake.Requests()
	b.fake.AddClientSecret(clientID, newSecret)
	added, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/acme", Secret: newSecret})
	if err != nil {
		t.Fatal(err)
	}
	if added.GetSecretId() != secretID(newSecret) || len(added.GetAccount().GetSecrets()) != 2 || added.GetAccount().GetSecrets()[0].GetSecretId() != secretID(newSecret) {
		t.Fatalf("after adding: %v", added)
	}
	pause()
	b.fake.RevokeClientSecret(clientID, clientSecret)
	pause()
	if _, err := b.accounts.RemoveAccountSecret(ctx, &credbrokerv1.RemoveAccountSecretRequest{Name: "accounts/acme", SecretId: secretID(clientSecret)}); err != nil {
		t.Fatal(err)
	}
	pause()
	close(stop)
	wg.Wait()

	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d calls failed during the rotation; first: %v", n, calls.Load(), firstFailure.Load())
	}
	a := b.account(t, "acme")
	if got := secretIDs(a); len(got) != 1 || got[0] != secretID(newSecret) || a.GetSecrets()[0].GetLastUseTime() == nil {
		t.Fatalf("after the rotation: %v", a)
	}
	if b.fake.Requests()-requests < 3 || calls.Load() < 100 {
		t.Fatalf("the test proved little: %d token requests during the rotation, %d calls", b.fake.Requests()-requests, calls.Load())
	}
	if a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
		t.Fatalf("state after the rotation: %v", a)
	}
}

// If the provider rejects the newest secret, the broker falls back to the
// other one and shows which one failed.
func TestSecretFallback(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	ctx := context.Background()
	b.fake.AddClientSecret(clientID, newSecret)
	if _, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/acme", Secret: newSecret}); err != nil {
		t.Fatal(err)
	}
	b.fake.RevokeClientSecret(clientID, newSecret) // say, deleted in the console by mistake

	forceRefresh := &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(59*time.Minute + 29*time.Second)}
	time.Sleep(1100 * time.Millisecond)
	if _, err := b.tokens.GetToken(ctx, forceRefresh); err != nil {
		t.Fatalf("GetToken with the newest secret revoked: %v", err)
	}
	a := b.account(t, "acme")
	newest, old := a.GetSecrets()[0], a.GetSecrets()[1]
	if a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE || newest.GetSecretId() != secretID(newSecret) ||
		newest.GetRejected().GetProviderError() != "invalid_client" || old.GetRejected() != nil || !old.GetLastUseTime().AsTime().After(old.GetCreateTime().AsTime()) {
		t.Fatalf("after falling back: %v", a)
	}
	if !strings.Contains(b.logs.String(), secretID(newSecret)) {
		t.Fatal("the log does not say which secret was rejected")
	}

	// Both rejected: the account needs attention.
	b.fake.RevokeClientSecret(clientID, clientSecret)
	b = b.restart(t) // opens the retry gate
	time.Sleep(1100 * time.Millisecond)
	_, err := b.tokens.GetToken(ctx, forceRefresh)
	wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
	if a := b.account(t, "acme"); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION ||
		a.GetSecrets()[0].GetRejected() == nil || a.GetSecrets()[1].GetRejected() == nil {
		t.Fatalf("with both secrets rejected: %v", a)
	}
}

func TestAddAndRemoveSecretErrors(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	ctx := context.Background()
	add := func(secret string) error {
		_, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/acme", Secret: secret})
		return err
	}
	remove := func(id string) error {
		_, err := b.accounts.RemoveAccountSecret(ctx, &credbrokerv1.RemoveAccountSecretRequest{Name: "accounts/acme", SecretId: id})
		return err
	}

	// A secret the provider does not accept is not kept.
	st := wantCode(t, add("canary-UNKNOWN-secret"), codes.FailedPrecondition, "CREDENTIALS_REJECTED")
	if strings.Contains(st.Message(), "canary") || len(b.account(t, "acme").GetSecrets()) != 1 {
		t.Fatalf("rejected secret: %q, %v", st.Message(), b.account(t, "acme"))
	}
	wantCode(t, add(clientSecret), codes.AlreadyExists, "")
	wantCode(t, add(""), codes.InvalidArgument, "secret")
	_, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/nosuch", Secret: newSecret})
	wantCode(t, err, codes.NotFound, "")
	wantCode(t, remove(secretID(clientSecret)), codes.FailedPrecondition, "LAST_SECRET")
	wantCode(t, remove("sha256:000000000000"), codes.NotFound, "")

	b.fake.AddClientSecret(clientID, newSecret)
	b.fake.AddClientSecret(clientID, "third-secret")
	if err := add(newSecret); err != nil {
		t.Fatal(err)
	}
	wantCode(t, add("third-secret"), codes.FailedPrecondition, "SECRET_LIMIT")

	// Every change is audited, naming the secret by its ID only.
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/acme"})
	if err != nil {
		t.Fatal(err)
	}
	var trail strings.Builder
	for _, ev := range events.GetEvents() {
		trail.WriteString(ev.String() + "\n")
	}
	if !strings.Contains(trail.String(), "add secret "+secretID(newSecret)) {
		t.Fatalf("no audit event for the added secret:\n%s", trail.String())
	}
	for name, out := range map[string]string{"audit trail": trail.String(), "logs": b.logs.String()} {
		assertAbsent(t, name, []byte(out), clientSecret, newSecret, "canary-UNKNOWN-secret")
	}
}

// An admin regenerates an API key: the new key is added, the old one dies
// at once in JumpCloud, and the proxy carries on with the new key.
func TestAPIKeyRotation(t *testing.T) {
	b := startBroker(t)
	b.linkAPIKey(t, "keyed")
	ctx := context.Background()
	const newKey = "canary-NEW-API-KEY-44aa"
	b.fake.SetAPIKey(newKey, orgID)
	b.fake.RevokeAPIKey(apiKey)
	if _, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/keyed", Secret: newKey}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.accounts.RemoveAccountSecret(ctx, &credbrokerv1.RemoveAccountSecretRequest{Name: "accounts/keyed", SecretId: secretID(apiKey)}); err != nil {
		t.Fatal(err)
	}
	resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
	if resp.StatusCode != http.StatusOK || b.fake.LastAPIRequest().Header.Get("x-api-key") != newKey {
		t.Fatalf("after rotating the API key: HTTP %d %s", resp.StatusCode, body)
	}
	if a := b.restart(t).account(t, "keyed"); len(a.GetSecrets()) != 1 || a.GetSecrets()[0].GetSecretId() != secretID(newKey) {
		t.Fatalf("after a restart: %v", a)
	}
}

// Accounts stored before accounts held a list of secrets keep working: the
// broker moves the secret into the list when it starts.
func TestSecretsOfOldRecordsAreMigrated(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	b.stop()
	st, err := server.OpenStore(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateAccount("acme", func(a *store.Account) error {
		a.SealedSecret, a.Secrets = a.Secrets[0].Sealed, nil
		return nil
	}, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	b = b.restart(t)
	a := b.account(t, "acme")
	if got := secretIDs(a); len(got) != 1 || got[0] != secretID(clientSecret) {
		t.Fatalf("after migration: %v", a)
	}
	time.Sleep(1100 * time.Millisecond)
	if _, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(59*time.Minute + 29*time.Second)}); err != nil {
		t.Fatalf("a new token with the migrated secret: %v", err)
	}
	b = b.restart(t) // nothing left to migrate
	if got := secretIDs(b.account(t, "acme")); len(got) != 1 {
		t.Fatalf("after a second start: %v", got)
	}
}

// An account whose only secret expires in three days shows
// SECRET_EXPIRING with the date, can be listed by it, and is warned about in
// the log and the audit trail; adding a secret that lasts ends it.
func TestSecretExpiryWarning(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	expire := time.Now().Add(3 * 24 * time.Hour).Truncate(time.Second)
	req := jumpCloudRequest("soon")
	req.SecretExpireTime = timestamppb.New(expire)
	if _, err := b.accounts.CreateAccount(ctx, req); err != nil {
		t.Fatal(err)
	}
	b.link(t, "fine")

	a := b.account(t, "soon")
	if a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE || a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_SECRET_EXPIRING ||
		!a.GetCredentialsExpireTime().AsTime().Equal(expire) || !a.GetSecrets()[0].GetExpireTime().AsTime().Equal(expire) {
		t.Fatalf("account whose secret expires in 3 days: %v", a)
	}
	if a := b.account(t, "fine"); a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_UNSPECIFIED || a.GetCredentialsExpireTime() != nil {
		t.Fatalf("account whose secret never expires: %v", a)
	}
	expiring := func() []string {
		t.Helper()
		resp, err := b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{StateReason: credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_SECRET_EXPIRING})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, a := range resp.GetAccounts() {
			names = append(names, a.GetName())
		}
		return names
	}
	if got := expiring(); len(got) != 1 || got[0] != "accounts/soon" {
		t.Fatalf("ListAccounts(SECRET_EXPIRING) = %v", got)
	}

	// The background check warns within a scan (about a second).
	date := expire.UTC().Format(time.RFC3339)
	var warning *credbrokerv1.AuditEvent
	for warning == nil {
		events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/soon"})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range events.GetEvents() {
			if ev.GetMethod() == "secret_expiring" {
				warning = ev
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(warning.GetDetail(), date) || warning.GetPrincipal() != "credbroker" {
		t.Fatalf("warning event: %v", warning)
	}
	if logs := b.logs.String(); !strings.Contains(logs, `"account":"soon","expire_time":"`+date+`","days_left":3`) || strings.Contains(logs, `"account":"fine","expire_time"`) {
		t.Fatalf("no warning for exactly the expiring account in the log:\n%s", logs)
	}

	b.fake.AddClientSecret(clientID, newSecret)
	if _, err := b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/soon", Secret: newSecret}); err != nil {
		t.Fatal(err)
	}
	if a := b.account(t, "soon"); a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_UNSPECIFIED || a.GetCredentialsExpireTime() != nil {
		t.Fatalf("after adding a secret that never expires: %v", a)
	}
	if got := expiring(); len(got) != 0 {
		t.Fatalf("ListAccounts(SECRET_EXPIRING) after the rotation = %v", got)
	}
}
