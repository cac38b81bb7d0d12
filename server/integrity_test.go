package server_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// editRecord changes a stopped broker's database the way someone who can
// write the file, but has no master key, can: straight through bbolt.
func editRecord(t *testing.T, dataDir, bucket, key, from, to string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dataDir, "credbroker.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		v := b.Get([]byte(key))
		if !bytes.Contains(v, []byte(from)) {
			t.Fatalf("%s/%s holds no %q", bucket, key, from)
		}
		return b.Put([]byte(key), bytes.Replace(bytes.Clone(v), []byte(from), []byte(to), 1))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Someone who can write the database file but has no master key edits an
// account's token URL to point at their own server, makes a caller key an
// admin, and stretches a cached token's expiry. The broker uses none of
// it: nothing reaches their server, the key authenticates no one, the
// accounts show NEEDS_ATTENTION with INTEGRITY_CHECK_FAILED, and each
// record is logged and audited. Deleting and re-linking repairs an
// account; revoking repairs a key.
func TestTamperedRecordsAreNeverUsed(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	var stolen atomic.Int64
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { stolen.Add(1) }))
	t.Cleanup(attacker.Close)
	fakeURL := strings.TrimSuffix(b.cfg.Provider.JumpCloudTokenURLUS, jumpcloudfake.TokenPath)
	generic := &credbrokerv1.CreateAccountRequest{AccountId: "generic", Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{
		Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{
			TokenUrl: fakeURL + jumpcloudfake.TokenPath, ClientId: clientID, ClientSecret: clientSecret, Scopes: []string{"api"},
		},
	}}
	if _, err := b.accounts.CreateAccount(context.Background(), generic); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "generic", svcPrincipal)
	b.link(t, "acme")
	b.link(t, "untouched")
	b.token(t, "acme")
	reader, err := b.callers.CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{KeyId: "reader", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}})
	if err != nil {
		t.Fatal(err)
	}
	b.grant(t, "generic", "callerKeys/reader")
	b.grant(t, "acme", "callerKeys/reader")
	b.stop()

	editRecord(t, b.cfg.DataDir, "accounts", "generic", fakeURL, attacker.URL)
	editRecord(t, b.cfg.DataDir, "caller_keys", "svc", `"role":"caller"`, `"role":"admin"`)
	editRecord(t, b.cfg.DataDir, "tokens", "acme", `"expiry":"2`, `"expiry":"3`)

	b = b.restart(t)
	requests := b.fake.Requests()
	// The edited key is no one, not an admin.
	svcAccounts := credbrokerv1.NewAccountServiceClient(b.dial(t, b.keys.svc, nil))
	_, err = svcAccounts.ListAccounts(context.Background(), &credbrokerv1.ListAccountsRequest{})
	wantCode(t, err, codes.Unauthenticated, "")
	// The accounts are shown, marked, and used by no one. Of an edited
	// account record nothing is shown or changed; acme's own record is
	// intact, only its cached token was edited.
	readerTokens := credbrokerv1.NewTokenServiceClient(b.dial(t, reader.GetKey(), nil))
	for _, id := range []string{"generic", "acme"} {
		a := b.account(t, id)
		if a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION ||
			a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_INTEGRITY_CHECK_FAILED ||
			a.GetLastError().GetReason() != credbrokerv1.ErrorReason_INTEGRITY_CHECK_FAILED {
			t.Fatalf("%s after tampering: %v", id, a)
		}
		_, err := readerTokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/" + id})
		wantCode(t, err, codes.PermissionDenied, "") // its grants are not trusted either
	}
	if a := b.account(t, "generic"); a.GetTokenUrl() != "" || len(a.GetGrants()) != 0 {
		t.Fatalf("the edited record is shown: %v", a)
	}
	_, err = b.accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{Name: "accounts/generic", Principal: "dns:other.internal"})
	wantCode(t, err, codes.FailedPrecondition, "INTEGRITY_CHECK_FAILED")
	if a := b.account(t, "untouched"); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
		t.Fatalf("an untouched account: %v", a)
	}
	time.Sleep(1100 * time.Millisecond) // a refresher scan
	if stolen.Load() != 0 || b.fake.Requests() != requests {
		t.Fatalf("requests sent for tampered records: %d to the attacker, %d to the provider", stolen.Load(), b.fake.Requests()-requests)
	}
	for _, name := range []string{"accounts/generic", "accounts/acme", "callerKeys/svc"} {
		if !strings.Contains(b.logs.String(), `"resource":"`+name+`"`) {
			t.Errorf("no log line names %s", name)
		}
		events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{Principal: "credbroker"})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ev := range events.GetEvents() {
			found = found || (ev.GetMethod() == "integrity_check_failed" && ev.GetResource() == name)
		}
		if !found {
			t.Errorf("no audit event names %s", name)
		}
	}

	keys, err := b.callers.ListCallerKeys(context.Background(), &credbrokerv1.ListCallerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys.GetCallerKeys() {
		if want := k.GetName() == "callerKeys/svc"; want != (k.GetState() == credbrokerv1.CallerKeyState_CALLER_KEY_STATE_INTEGRITY_CHECK_FAILED) {
			t.Fatalf("listed key: %v", k)
		}
	}

	// Repairs: delete and re-link; revoke the key and make another.
	if _, err := b.accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/acme"}); err != nil {
		t.Fatal(err)
	}
	b.link(t, "acme")
	if _, err := b.callers.RevokeCallerKey(context.Background(), &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/svc"}); err != nil {
		t.Fatal(err)
	}
	b = b.restart(t)
	if a := b.account(t, "acme"); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
		t.Fatalf("re-linked account: %v", a)
	}
	keys, err = b.callers.ListCallerKeys(context.Background(), &credbrokerv1.ListCallerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys.GetCallerKeys() {
		if k.GetName() == "callerKeys/svc" && (k.GetRevokeTime() == nil || k.GetRole() != credbrokerv1.Role_ROLE_CALLER) {
			t.Fatalf("revoked tampered key: %v", k)
		}
	}
	_, err = b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/untouched", MinTtl: durationpb.New(time.Minute)})
	wantCode(t, err, codes.Unauthenticated, "")
}

// stoppedWithBackup is a stopped broker with account acme, and a backup of
// it taken while it ran, in a file named credbroker.db of its own directory.
func stoppedWithBackup(t *testing.T) (*broker, string) {
	t.Helper()
	b := startBroker(t)
	b.link(t, "acme")
	data, _, err := backupOf(t, b, b.keys.admin)
	if err != nil {
		t.Fatal(err)
	}
	b.stop()
	backup := filepath.Join(t.TempDir(), "credbroker.db")
	if err := os.WriteFile(backup, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return b, backup
}

// A backup in which someone without the master key edited a record (here
// a caller key's role) is refused by restore, naming the record, before
// anything in the data directory changes.
func TestRestoreRefusesTamperedBackup(t *testing.T) {
	t.Parallel()
	b, tampered := stoppedWithBackup(t)
	editRecord(t, filepath.Dir(tampered), "caller_keys", "svc", `"role":"caller"`, `"role":"admin"`)
	before, err := os.ReadFile(filepath.Join(b.cfg.DataDir, "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = datadir.Restore(b.cfg.Config, tampered, false)
	if err == nil || !strings.Contains(err.Error(), "integrity check") || !strings.Contains(err.Error(), `caller_keys "svc"`) {
		t.Fatalf("restore of a tampered backup: %v", err)
	}
	after, err := os.ReadFile(filepath.Join(b.cfg.DataDir, "credbroker.db"))
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("a refused restore changed the database (%v)", err)
	}
	entries, _ := os.ReadDir(b.cfg.DataDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), "restoring") || strings.Contains(e.Name(), "before-restore") {
			t.Fatalf("a refused restore left %s", e.Name())
		}
	}
}

// stripTags turns a database file back into the earlier, untagged format,
// as someone without the master key could: every record loses its tag and
// the database its id. Its key check value stays the current one, bound
// to the id: a check value of the earlier format would need the master key.
func stripTags(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"accounts", "tokens", "caller_keys", "admin_principals", "audit"} {
			b := tx.Bucket([]byte(name))
			if b == nil {
				continue // a kind with no record yet
			}
			var keys, values [][]byte
			_ = b.ForEach(func(k, v []byte) error {
				keys, values = append(keys, bytes.Clone(k)), append(values, bytes.Clone(v[33:]))
				return nil
			})
			for i := range keys {
				if err := b.Put(keys[i], values[i]); err != nil {
					return err
				}
			}
		}
		return tx.Bucket([]byte("meta")).Delete([]byte("database-id"))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Passing a database off as one of the earlier, untagged version, so that
// its edited records get tagged as they are, does not work: the broker
// refuses to start on it, and restore refuses it as a backup.
func TestUntaggedDowngradeIsRefused(t *testing.T) {
	t.Parallel()
	b, backup := stoppedWithBackup(t)
	path := filepath.Join(b.cfg.DataDir, "credbroker.db")
	stripTags(t, path)
	editRecord(t, b.cfg.DataDir, "caller_keys", "svc", `"role":"caller"`, `"role":"admin"`)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if srv, err := server.New(b.cfg); err == nil {
		closeUnserved(t, srv)
		t.Fatal("the broker started on a database stripped of its tags")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("the refused start changed the database")
	}

	stripTags(t, backup)
	cfg := b.cfg
	cfg.DataDir = t.TempDir()
	for _, allow := range []bool{false, true} {
		if _, err := datadir.Restore(cfg.Config, backup, allow); err == nil {
			t.Fatalf("restore (allow untagged: %v) accepted a backup stripped of its tags", allow)
		}
	}
}

// Deleting the bootstrap flag of a database in use (it is not a record, so
// it carries no tag) does not make the broker create a new admin key: a
// database that holds records is never bootstrapped again.
func TestDeletedBootstrapFlagMakesNoAdminKey(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.stop()
	db, err := bolt.Open(filepath.Join(b.cfg.DataDir, "credbroker.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("bootstrapped")) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	key := srv.BootstrapAdminKey()
	closeUnserved(t, srv)
	if key != "" {
		t.Fatal("the broker made a new admin key for a database in use")
	}
	b = b.restart(t)
	if _, err := b.accounts.ListAccounts(context.Background(), &credbrokerv1.ListAccountsRequest{}); err != nil {
		t.Fatalf("the admin key after the flag was deleted: %v", err)
	}
}
