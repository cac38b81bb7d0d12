package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// rawUpdate changes the file as someone without the master key could:
// straight through the engine, past the store.
func rawUpdate(t *testing.T, s *Store, fn func(b *raw) error) {
	t.Helper()
	if err := s.db.(*boltdb.DB).Bulk(func(b *boltdb.Bulk) error { return fn(&raw{b}) }); err != nil {
		t.Fatal(err)
	}
}

// raw reads and writes stored values by bucket and key.
type raw struct{ b *boltdb.Bulk }

func (r *raw) get(bucket []byte, k string) []byte {
	v, _ := r.b.Get(key(bucket, k))
	return v
}

func (r *raw) put(bucket []byte, k string, v []byte) error { return r.b.Put(key(bucket, k), v) }

// Every kind of change made without the record key is detected: an edited
// value, a record moved to another key or kind, a bare record of the
// earlier format, and a record copied from another database under the
// same master key.
func TestTamperedRecordsAreDetected(t *testing.T) {
	s, path := openTemp(t)
	for _, id := range []string{"a", "b", "c"} {
		a := Account{ID: id, Provider: "oauth2_client_credentials", TokenURL: "https://idp.example/token"}
		if err := s.CreateAccount(a, TokenState{State: "active"}, AuditEvent{Time: time.Now(), Method: "create"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateCallerKey(CallerKey{ID: "k", Role: "caller"}, AuditEvent{Time: time.Now(), Method: "create"}); err != nil {
		t.Fatal(err)
	}
	other := openAt(t, filepath.Join(t.TempDir(), "other.db")) // same master key, another database
	if err := other.CreateAccount(Account{ID: "c", TokenURL: "https://attacker.example/token"}, TokenState{}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	fromOther, err := other.db.Get(ctx, key(accountsBucket, "c"))
	if err != nil {
		t.Fatal(err)
	}

	rawUpdate(t, s, func(r *raw) error {
		edited := bytes.Replace(r.get(accountsBucket, "a"), []byte("idp.example"), []byte("evil.example"), 1)
		if err := r.put(accountsBucket, "a", edited); err != nil {
			return err
		}
		if err := r.put(accountsBucket, "c", fromOther.Value); err != nil {
			return err
		}
		// The caller key's record moved into the admin principals.
		if err := r.put(adminsBucket, "k", r.get(callerKeysBucket, "k")); err != nil {
			return err
		}
		// A bare record of the earlier format, and b's record under key d.
		if err := r.put(callerKeysBucket, "legacy", []byte(`{"v":1,"id":"legacy","role":"admin"}`)); err != nil {
			return err
		}
		return r.put(accountsBucket, "d", r.get(accountsBucket, "b"))
	})

	for _, id := range []string{"a", "c", "d"} {
		if _, err := s.Account(id); !errors.Is(err, ErrIntegrity) {
			t.Errorf("Account(%s): %v, want ErrIntegrity", id, err)
		}
		if _, err := s.UpdateAccount(id, func(*Account) error { return nil }, AuditEvent{}); !errors.Is(err, ErrIntegrity) {
			t.Errorf("UpdateAccount(%s): %v, want ErrIntegrity", id, err)
		}
	}
	if a, err := s.Account("b"); err != nil || a.TokenURL != "https://idp.example/token" {
		t.Fatalf("the untouched account: %+v, %v", a, err)
	}
	list, err := s.Accounts("", 10)
	if err != nil || len(list) != 4 {
		t.Fatalf("Accounts: %+v, %v", list, err)
	}
	for _, a := range list {
		if want := a.ID != "b"; a.Tampered != want || (a.Tampered && a.TokenURL != "") {
			t.Errorf("listed %+v: Tampered should be %v, with nothing but the ID", a, want)
		}
	}
	all, err := s.All()
	if err != nil || len(all) != 4 || !all[0].Account.Tampered || all[1].Account.Tampered || all[1].TokenState.State != "active" {
		t.Fatalf("All: %+v, %v", all, err)
	}
	keys, _ := s.CallerKeys("", 10)
	admins, _ := s.Admins("", 10)
	if len(keys) != 2 || keys[0].Tampered != false || !keys[1].Tampered || len(admins) != 1 || !admins[0].Tampered {
		t.Fatalf("caller keys %+v, admins %+v: want k good, legacy and the moved record tampered", keys, admins)
	}
	// An edited token state makes its account tampered too.
	rawUpdate(t, s, func(r *raw) error {
		return r.put(tokensBucket, "b", bytes.Replace(r.get(tokensBucket, "b"), []byte("active"), []byte("ACTIVE"), 1))
	})
	if all, _ := s.All(); !all[1].Account.Tampered {
		t.Fatal("an edited token state went unnoticed")
	}
	// An edited audit event shows as such, in its place.
	rawUpdate(t, s, func(r *raw) error {
		events, err := r.b.List(auditPrefix)
		if err != nil {
			return err
		}
		return r.b.Put(events[0].Key, bytes.Replace(events[0].Value, []byte("create"), []byte("delete"), 1))
	})
	var methods []string
	_ = s.ScanAudit(AuditPos{}, func(_ AuditPos, ev AuditEvent) bool { methods = append(methods, ev.Method); return true })
	if len(methods) != 4 || methods[3] != TamperedEvent || methods[0] != "create" {
		t.Fatalf("audit events: %v", methods)
	}
	// A tampered record can still be deleted.
	if err := s.DeleteAccount("a", AuditEvent{}); err != nil {
		t.Fatal(err)
	}

	// CheckRecords finds them all in a copy of the file.
	s.Close()
	if err := CheckRecords(path, keyring.NewMasters(testMaster)); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("CheckRecords: %v", err)
	}
	clean := filepath.Join(t.TempDir(), "clean.db")
	other.Close()
	data, _ := os.ReadFile(other.db.(*boltdb.DB).Path())
	_ = os.WriteFile(clean, data, 0o600)
	if err := CheckRecords(clean, keyring.NewMasters(testMaster)); err != nil {
		t.Fatalf("CheckRecords of an untouched database: %v", err)
	}
}

// A database of the earlier format (bare JSON records, no database id) is
// upgraded in one transaction on first Authenticate, with an audit event;
// the next start finds nothing to do.
func TestUpgradeTagsRecordsOfEarlierVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credbroker.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, s, func(raw *raw) error {
		for _, r := range []struct{ bucket, key, value string }{
			{"accounts", "acme", `{"v":1,"id":"acme","provider":"jumpcloud_service_account","client_id":"c"}`},
			{"tokens", "acme", `{"v":1,"state":"active"}`},
			{"caller_keys", "svc", `{"v":1,"id":"svc","role":"caller"}`},
			{"audit", string(AuditPos{Time: time.Now(), Seq: 1}.Bytes()), `{"v":1,"method":"create","code":"OK"}`},
		} {
			if err := raw.put([]byte(r.bucket), r.key, []byte(r.value)); err != nil {
				return err
			}
		}
		return nil
	})
	// Someone who strips the tags cannot pass the database off as an
	// earlier version's: without a legacy check value it is refused.
	if _, err := s.Authenticate(keyring.NewMasters(testMaster), false, AuditEvent{}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("records without an id or a check value: %v, want ErrIntegrity", err)
	}
	n, err := s.Authenticate(keyring.NewMasters(testMaster), true, AuditEvent{Time: time.Now(), Method: "tag_records"})
	if err != nil || n != 4 {
		t.Fatalf("upgrade tagged %d records (%v), want 4", n, err)
	}
	if a, err := s.Account("acme"); err != nil || a.ClientID != "c" {
		t.Fatalf("after the upgrade: %+v, %v", a, err)
	}
	id, _ := s.DatabaseID()
	if check, _ := s.KeyCheck(); testMaster.VerifyKeyCheck(check, id) != nil {
		t.Fatal("the upgrade did not store a check value bound to the new id")
	}
	if pending, _ := s.CompactPending(); !pending {
		t.Fatal("the upgrade left the untagged records in freed pages with no compaction pending")
	}
	s.Close()

	s = openAt(t, path)
	if all, err := s.All(); err != nil || len(all) != 1 || all[0].Account.Tampered || all[0].TokenState.State != "active" {
		t.Fatalf("after reopening: %+v, %v", all, err)
	}
	var methods []string
	_ = s.ScanAudit(AuditPos{}, func(_ AuditPos, ev AuditEvent) bool { methods = append(methods, ev.Method); return true })
	if len(methods) != 2 || methods[0] != "tag_records" {
		t.Fatalf("audit events after the upgrade: %v", methods)
	}
}

// A database with tagged records but no id was not written by any version:
// it is refused, and left as it was.
func TestUpgradeRefusesTaggedRecordsWithoutID(t *testing.T) {
	s, path := openTemp(t)
	if err := s.CreateCallerKey(CallerKey{ID: "k"}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, s, func(r *raw) error { return r.b.Delete(key(metaBucket, string(databaseIDKey))) })
	s.Close()
	s2, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Authenticate(keyring.NewMasters(testMaster), true, AuditEvent{}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Authenticate: %v, want ErrIntegrity", err)
	}
	if id, _ := s2.meta(databaseIDKey); id != nil {
		t.Fatal("a refused upgrade wrote a database id")
	}
}

// Compact leaves no trace of a deleted account in the file, keeps every
// live record, and the store goes on working on the new file; CompactTo
// writes the same live data to a backup.
func TestCompactRemovesDeletedRecords(t *testing.T) {
	s, path := openTemp(t)
	const marker = "deleted-account-marker-5d1c"
	if err := s.CreateAccount(Account{ID: "gone", ClientID: marker}, TokenState{}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccount(Account{ID: "kept", ClientID: "kept-client"}, TokenState{}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAccount("gone", AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if pending, _ := s.CompactPending(); !pending {
		t.Fatal("a deletion left no compaction pending")
	}
	if data, _ := os.ReadFile(path); !bytes.Contains(data, []byte(marker)) {
		t.Fatal("the deleted record is not in the file before compaction: this test proves nothing")
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	if _, err := s.CompactTo(backup); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, backup} {
		data, err := os.ReadFile(p)
		if err != nil || bytes.Contains(data, []byte(marker)) || !bytes.Contains(data, []byte("kept-client")) {
			t.Fatalf("%s after compaction: deleted record still there, or live one missing (%v)", p, err)
		}
	}
	if pending, _ := s.CompactPending(); pending {
		t.Fatal("compaction did not clear the pending flag")
	}
	if _, err := os.Stat(path + ".compacting"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("compaction left its file behind: %v", err)
	}
	if err := s.CreateAccount(Account{ID: "new"}, TokenState{}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openAt(t, path)
	if list, err := s.Accounts("", 10); err != nil || len(list) != 2 || list[0].ID != "kept" || list[1].ID != "new" {
		t.Fatalf("after reopening the compacted file: %+v, %v", list, err)
	}
}

// Removing a secret from an account makes a compaction pending; other
// changes do not.
func TestDroppedSecretMakesCompactionPending(t *testing.T) {
	s, _ := openTemp(t)
	a := Account{ID: "a", WrappedKey: []byte("wk"), Secrets: []Secret{{ID: "1", Sealed: []byte("s1")}, {ID: "2", Sealed: []byte("s2")}}}
	if err := s.CreateAccount(a, TokenState{}, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateAccount("a", func(a *Account) error { a.DisplayName = "x"; return nil }, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if pending, _ := s.CompactPending(); pending {
		t.Fatal("a rename made a compaction pending")
	}
	if _, err := s.UpdateAccount("a", func(a *Account) error { a.Secrets = a.Secrets[1:]; return nil }, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	if pending, _ := s.CompactPending(); !pending {
		t.Fatal("removing a secret left no compaction pending")
	}
}
