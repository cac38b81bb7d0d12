package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// encodings of a canary that a leak could take.
func encodings(canary string) []string {
	b := []byte(canary)
	return []string{canary, base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b), hex.EncodeToString(b)}
}

func assertAbsent(t *testing.T, what string, haystack []byte, canaries ...string) {
	t.Helper()
	if len(haystack) == 0 {
		t.Fatalf("%s is empty: the scan would prove nothing", what)
	}
	for _, c := range canaries {
		for _, enc := range encodings(c) {
			if bytes.Contains(haystack, []byte(enc)) {
				t.Fatalf("%s contains the canary %q (as %q)", what, c, enc)
			}
		}
	}
}

// Secrets and access tokens never appear in responses (outside GetToken),
// errors, logs or the database file.
func TestSecretsNeverLeave(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	var seen bytes.Buffer
	record := func(m proto.Message, err error) {
		if err != nil {
			seen.WriteString(err.Error())
			return
		}
		seen.WriteString(protojson.Format(m))
		seen.WriteString(prototext.Format(m))
	}

	b.link(t, "acme")
	accessToken := b.token(t, "acme").GetAccessToken()
	if accessToken == "" {
		t.Fatal("no token")
	}
	record(b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/acme"}))
	record(b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{}))
	record(b.accounts.UpdateAccount(ctx, &credbrokerv1.UpdateAccountRequest{Account: &credbrokerv1.Account{Name: "accounts/acme", DisplayName: "x"}}))
	// Failures of every kind, including a provider that echoes the secret back.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, sec, _ := r.BasicAuth()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client","error_description":"bad secret ` + sec + `"}`))
	}))
	defer echo.Close()
	record(b.accounts.CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{AccountId: "echo", Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{
		Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{TokenUrl: echo.URL, ClientId: "id", ClientSecret: clientSecret},
	}}))
	bad := jumpCloudRequest("bad")
	bad.GetJumpcloudServiceAccount().ClientSecret = clientSecret + "-wrong"
	record(b.accounts.CreateAccount(ctx, bad))
	bad.GetJumpcloudServiceAccount().Region = 0
	record(b.accounts.CreateAccount(ctx, bad))
	for _, behaviour := range []jumpcloudfake.Behaviour{jumpcloudfake.Malformed, jumpcloudfake.ServerError, jumpcloudfake.RejectAll} {
		b.fake.SetBehaviour(behaviour)
		record(b.accounts.CreateAccount(ctx, jumpCloudRequest("other")))
	}

	// Caller keys: listing, revoking, and calls with bad, revoked and unknown keys.
	worker := b.createKey(t, "worker", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	record(b.callers.ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{}))
	record(b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/worker"}))
	for _, key := range []string{worker, worker + "x", strings.TrimPrefix(worker, "cbk_")} {
		record(credbrokerv1.NewTokenServiceClient(b.dial(t, key, nil)).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}))
	}
	record(b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/other"}))
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.GetEvents()) < 15 {
		t.Fatalf("only %d audit events", len(events.GetEvents()))
	}

	b.stop()
	db, err := os.ReadFile(filepath.Join(b.cfg.DataDir, "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	canaries := []string{clientSecret, accessToken, b.keys.admin, b.keys.svc, worker}
	assertAbsent(t, "API responses and errors", seen.Bytes(), canaries...)
	assertAbsent(t, "audit events", []byte(protojson.Format(events)), canaries...)
	assertAbsent(t, "server logs", []byte(b.logs.String()), canaries...)
	assertAbsent(t, "database file", db, canaries...)
	if !strings.Contains(seen.String(), provider.Withheld) {
		t.Error("the echoing provider's error_description is not withheld")
	}
}

// Ciphertexts moved between accounts inside the database fail to decrypt:
// the broker never uses one account's secret or token for another.
func TestSwappedCiphertextsFail(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "alpha")
	b.fake.SetClient("beta-client", "beta-secret")
	beta := jumpCloudRequest("beta")
	beta.GetJumpcloudServiceAccount().ClientId, beta.GetJumpcloudServiceAccount().ClientSecret = "beta-client", "beta-secret"
	if _, err := b.accounts.CreateAccount(context.Background(), beta); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "beta", svcPrincipal)
	betaToken := b.token(t, "beta").GetAccessToken()
	b.stop()

	// Give alpha beta's sealed secret, wrapped key and token, as an attacker with the file could.
	st, err := server.OpenStore(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	betaRec, _ := st.Account("beta")
	betaTokens, _ := st.TokenState("beta")
	if _, err := st.UpdateAccount("alpha", func(a *store.Account) error {
		a.WrappedKey, a.Secrets = betaRec.WrappedKey, betaRec.Secrets
		return nil
	}, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if err := st.UpdateTokenState("alpha", func(ts *store.TokenState, _ []byte) error { *ts = betaTokens; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()

	b = startWith(t, b.cfg, b.fake, b.logs)
	before := b.fake.Requests()
	_, err = b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/alpha"})
	st2 := wantCode(t, err, codes.Internal, "")
	if st2.Message() != "internal error" {
		t.Fatalf("INTERNAL message %q says more than it should", st2.Message())
	}
	if strings.Contains(err.Error(), betaToken) || b.fake.Requests() != before {
		t.Fatalf("alpha got beta's token, or beta's secret was sent upstream (%d requests)", b.fake.Requests()-before)
	}
	// Beta is unharmed.
	if got := b.token(t, "beta").GetAccessToken(); got != betaToken {
		t.Fatalf("beta's token changed")
	}
}

func TestWrongMasterKeyRefusesAndLeavesFileUntouched(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	b.stop()
	dbPath := filepath.Join(b.cfg.DataDir, "credbroker.db")
	before := fileHash(t, dbPath)

	wrong := b.cfg
	wrong.MasterKey = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	_, err := server.New(wrong)
	if err == nil || !strings.Contains(err.Error(), "master key does not match") {
		t.Fatalf("New with a wrong key: err = %v", err)
	}
	// No key at all, and no generated key file beside the data: also refused.
	none := b.cfg
	none.MasterKey = ""
	if _, err := server.New(none); err == nil || !strings.Contains(err.Error(), "no master key is configured") {
		t.Fatalf("New with no key: err = %v", err)
	}
	if after := fileHash(t, dbPath); after != before {
		t.Fatal("a refused start changed the database file")
	}
	// The right key still opens it.
	startWith(t, b.cfg, b.fake, b.logs).token(t, "acme")
}

func TestGeneratedLocalMasterKey(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.MasterKey = ""
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	keyFile := filepath.Join(cfg.DataDir, "master.key")
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated key file: %v, %v", fi, err)
	}
	if di, err := os.Stat(cfg.DataDir); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode: %v, %v", di.Mode().Perm(), err)
	}
	if !strings.Contains(logs.String(), "GENERATED A LOCAL MASTER KEY") {
		t.Fatalf("no loud warning in the log: %s", logs.String())
	}
	key, _ := os.ReadFile(keyFile)
	db, _ := os.ReadFile(filepath.Join(cfg.DataDir, "credbroker.db"))
	assertAbsent(t, "database file", db, strings.TrimSpace(string(key)))
	// The next start reuses it.
	b.restart(t).token(t, "acme")
}

func TestListenOnlyOnLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0"} {
		cfg, _, _ := newConfig(t)
		cfg.ListenAddr = addr
		if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("listen %s: err = %v, want a refusal", addr, err)
		}
	}
}

func TestDefaultConfigIsJumpCloudsDocumentedSetup(t *testing.T) {
	d := server.DefaultConfig()
	for _, c := range []struct{ got, want string }{
		{d.ListenAddr, "127.0.0.1:50051"},
		{d.DataDir, "./credbroker-data"},
		{d.Provider.JumpCloudTokenURLUS, "https://admin-oauth.id.jumpcloud.com/oauth2/token"},
		{d.Provider.JumpCloudTokenURLEU, "https://admin-oauth.id.eu.jumpcloud.com/oauth2/token"},
		{d.Provider.JumpCloudAPIURLUS, "https://console.jumpcloud.com/api"},
		{d.Provider.JumpCloudAPIURLEU, "https://console.eu.jumpcloud.com/api"},
	} {
		if c.got != c.want {
			t.Errorf("default %q, want %q", c.got, c.want)
		}
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		t.Fatalf("read %s: %v", path, err)
	}
	return sha256.Sum256(data)
}
