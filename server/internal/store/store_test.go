package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// testMaster is the master key of the tests' stores.
var testMaster, _ = keyring.ParseMasterKey("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credbroker.db")
	return openAt(t, path), path
}

// openAt opens (or creates) the store at path with testMaster's record key.
func openAt(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Authenticate(keyring.NewMasters(testMaster), false, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAccountLifecycle(t *testing.T) {
	s, path := openTemp(t)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("db file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	for _, id := range []string{"b", "a", "c"} {
		if err := s.CreateAccount(Account{ID: id, ClientID: "cid-" + id}, TokenState{State: "active"}, AuditEvent{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateAccount(Account{ID: "a"}, TokenState{}, AuditEvent{}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate create: err = %v, want ErrExists", err)
	}
	page, err := s.Accounts("", 2)
	if err != nil || len(page) != 2 || page[0].ID != "a" || page[1].ID != "b" {
		t.Fatalf("first page = %+v, %v", page, err)
	}
	page, err = s.Accounts("b", 2)
	if err != nil || len(page) != 1 || page[0].ID != "c" {
		t.Fatalf("second page = %+v, %v", page, err)
	}
	all, err := s.All()
	if err != nil || len(all) != 3 || all[0].Account.ID != "a" || all[0].TokenState.State != "active" || all[2].Account.ClientID != "cid-c" {
		t.Fatalf("All() = %+v, %v", all, err)
	}

	if err := s.UpdateTokenState("b", func(ts *TokenState, _ []byte) error { ts.TokenType = "Bearer"; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	if ts, err := s.TokenState("b"); err != nil || ts.State != "active" || ts.TokenType != "Bearer" {
		t.Fatalf("token state after update = %+v, %v", ts, err)
	}

	a, err := s.UpdateAccount("a", func(a *Account) error { a.DisplayName = "Acme"; return nil }, AuditEvent{})
	if err != nil || a.DisplayName != "Acme" || a.Version != recordVersion {
		t.Fatalf("update = %+v, %v", a, err)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateAccount("a", func(a *Account) error { a.DisplayName = "lost"; return boom }, AuditEvent{}); !errors.Is(err, boom) {
		t.Fatalf("failed update: err = %v", err)
	}
	if a, _ := s.Account("a"); a.DisplayName != "Acme" {
		t.Fatalf("a failed update was written: %+v", a)
	}

	if err := s.DeleteAccount("a", AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Account("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: err = %v, want ErrNotFound", err)
	}
	if err := s.UpdateTokenState("a", func(ts *TokenState, _ []byte) error { ts.State = "active"; return nil }, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("token state for a deleted account: err = %v, want ErrNotFound", err)
	}
	if ts, err := s.TokenState("a"); err != nil || ts.State != "" {
		t.Fatalf("deleted account's token state = %+v, %v", ts, err)
	}
	if err := s.DeleteAccount("a", AuditEvent{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: err = %v, want ErrNotFound", err)
	}
}

// All reads a page at a time, and every account gets its own token state.
func TestAllReadsPageByPage(t *testing.T) {
	s, _ := openTemp(t)
	defer func(n int) { wholePage = n }(wholePage)
	wholePage = 3
	for i := range 10 {
		id := fmt.Sprintf("acct-%02d", i)
		if err := s.CreateAccount(Account{ID: id}, TokenState{State: "active", TokenType: "type of " + id}, AuditEvent{}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.All()
	if err != nil || len(all) != 10 {
		t.Fatalf("All() = %d accounts, %v; want 10", len(all), err)
	}
	for i, st := range all {
		if id := fmt.Sprintf("acct-%02d", i); st.Account.ID != id || st.TokenState.TokenType != "type of "+id {
			t.Fatalf("All()[%d] = %s with token type %q, want %s with its own", i, st.Account.ID, st.TokenState.TokenType, id)
		}
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	_, path := openTemp(t)
	_, err := Open(path, 100*time.Millisecond)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: err = %v, want ErrLocked", err)
	}
}

func TestUnknownRecordVersionIsRefused(t *testing.T) {
	s, _ := openTemp(t)
	if err := s.CreateAccount(Account{ID: "a"}, TokenState{}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateAccount("a", func(a *Account) error { return nil }, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	// Write a record from a "future" build directly.
	err := s.db.(*boltdb.DB).Bulk(func(b *boltdb.Bulk) error {
		return b.Put(key(accountsBucket, "a"), s.masters.SealRecord(accountsBucket, []byte("a"), []byte(`{"v":99,"id":"a"}`)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Account("a"); err == nil {
		t.Fatal("a record of an unknown version was accepted")
	}
}
