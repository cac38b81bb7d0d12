package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/devetcd/etcdtest"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
	"github.com/credbroker/credbroker/server/internal/storage/etcd"
)

var nextMaster, _ = keyring.ParseMasterKey("c2Vjb25kLWtleS1mb3ItcmVrZXktdGVzdHMtMzItYnk=")

// linkSealed stores an account whose secret and token are really sealed
// under its data key, and returns the secret.
func linkSealed(t *testing.T, s *Store, masters *keyring.Masters, id string) string {
	t.Helper()
	dk, wrapped, err := masters.NewDataKey(id)
	if err != nil {
		t.Fatal(err)
	}
	secret := "secret of " + id
	sealed, err := dk.Seal(keyring.FieldClientSecret, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	token, err := dk.Seal(keyring.FieldAccessToken, []byte("token of "+id))
	if err != nil {
		t.Fatal(err)
	}
	a := Account{ID: id, WrappedKey: wrapped, Secrets: []Secret{{ID: "1", Sealed: sealed}}}
	if err := s.CreateAccount(a, TokenState{SealedToken: token}, AuditEvent{Time: time.Now(), Method: "create"}); err != nil {
		t.Fatal(err)
	}
	return secret
}

// checkUnder checks that every account opens with key alone: its data key
// is wrapped by it, its records are tagged under it, its secret and token
// open.
func checkUnder(t *testing.T, s *Store, key *keyring.MasterKey, secrets map[string]string) {
	t.Helper()
	only := keyring.NewMasters(key)
	id, _ := s.DatabaseID()
	if err := only.Bind(id); err != nil {
		t.Fatal(err)
	}
	s.masters = only
	if err := s.RefreshKeyCheck(); err != nil {
		t.Fatalf("the key check value: %v", err)
	}
	for acct, secret := range secrets {
		a, err := s.Account(acct)
		if err != nil {
			t.Fatalf("account %s under the new key alone: %v", acct, err)
		}
		got, err := keyring.New(only, nil).Open(acct, a.WrappedKey, keyring.FieldClientSecret, a.Secrets[0].Sealed)
		if err != nil || string(got) != secret {
			t.Fatalf("secret of %s: %q, %v", acct, got, err)
		}
		ts, err := s.TokenState(acct)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := keyring.New(only, nil).Open(acct, a.WrappedKey, keyring.FieldAccessToken, ts.SealedToken); err != nil {
			t.Fatalf("token of %s: %v", acct, err)
		}
	}
	if _, err := s.CallerKeys("", 0); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := s.ScanAudit(AuditPos{}, func(_ AuditPos, ev AuditEvent) bool {
		if ev.Method == TamperedEvent {
			t.Errorf("an audit event fails its check under the new key")
		}
		n++
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no audit event was read")
	}
}

// A rotation interrupted after the switch (only the switch made) is
// finished by the next call, which moves every account; afterwards the new
// key alone opens everything, and the record of the rotation is gone.
func TestRotationResumes(t *testing.T) {
	s, _ := openTemp(t)
	masters := keyring.NewMasters(nextMaster, testMaster)
	id, _ := s.DatabaseID()
	if err := masters.Bind(id); err != nil {
		t.Fatal(err)
	}
	masters.Use(testMaster)
	s.masters = masters
	secrets := map[string]string{}
	for i := range 5 {
		acct := fmt.Sprint("acct-", i)
		secrets[acct] = linkSealed(t, s, masters, acct)
	}
	if err := s.CreateCallerKey(CallerKey{ID: "svc"}, AuditEvent{Time: time.Now(), Method: "create"}); err != nil {
		t.Fatal(err)
	}

	// A record that fails its check under both keys is left as it is,
	// counted once.
	if err := s.db.(*boltdb.DB).Bulk(func(b *boltdb.Bulk) error {
		return b.Put(key(callerKeysBucket, "bad"), []byte("not a tagged record"))
	}); err != nil {
		t.Fatal(err)
	}
	// A connect link and a sign-in under way hold an app's client secret
	// under a data key of their own: it moves too.
	appKey, appWrapped, err := masters.NewDataKey("connect-link:cs-1")
	if err != nil {
		t.Fatal(err)
	}
	appSealed, err := appKey.Seal(keyring.FieldClientSecret, []byte("app-secret"))
	if err != nil {
		t.Fatal(err)
	}
	app := SignInApp{KeyID: "connect-link:cs-1", WrappedKey: appWrapped, SealedClientSecret: appSealed}
	if err := s.CreateConnectSession("link-hash", ConnectSession{ID: "cs-1", AccountID: "later", App: &app, ExpireTime: time.Now().Add(time.Hour)}, AuditEvent{Time: time.Now(), Method: "create"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAuthorization("state-hash", Authorization{AccountID: "later", App: app, ExpireTime: time.Now().Add(time.Hour)}, time.Now(), AuditEvent{Time: time.Now(), Method: "start"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.switchKey(testMaster, nextMaster, nil); err != nil {
		t.Fatal(err)
	}
	if p, err := s.PendingRotation(); err != nil || p == nil || p.From != testMaster.ID() || p.To != nextMaster.ID() {
		t.Fatalf("pending rotation after the switch: %+v, %v", p, err)
	}
	// Records written after the switch are under the new key.
	secrets["late"] = linkSealed(t, s, masters, "late")
	if _, err := s.RotateMasterKey(testMaster, nil); !errors.Is(err, ErrRotationBlocked) {
		t.Fatalf("a rotation back while one is unfinished: %v", err)
	}

	r, err := s.RotateMasterKey(nextMaster, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Accounts != 5 || r.Records < 7 || r.Tampered != 1 {
		t.Fatalf("the resumed rotation did %+v; want the 5 accounts made before the switch, and their 5 token states, the caller key and the audit events", r)
	}
	if p, _ := s.PendingRotation(); p != nil {
		t.Fatalf("the rotation is still recorded as pending: %+v", p)
	}
	if r, err := s.RotateMasterKey(nextMaster, nil); err != nil || r.From != "" || r.Accounts != 0 {
		t.Fatalf("a rotation to the key the database is under: %+v, %v", r, err)
	}
	checkUnder(t, s, nextMaster, secrets)
	link, _, err := s.ConnectSession("link-hash")
	if err != nil {
		t.Fatal(err)
	}
	pending, err := s.TakeAuthorization("state-hash", func(Authorization) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for name, app := range map[string]*SignInApp{"connect link": link.App, "sign-in": &pending.App} {
		if got, err := keyring.New(s.masters, nil).Open(app.KeyID, app.WrappedKey, keyring.FieldClientSecret, app.SealedClientSecret); err != nil || string(got) != "app-secret" {
			t.Fatalf("the %s's client secret under the new key alone: %q, %v", name, got, err)
		}
	}
}

// Two replicas share a store on etcd. Once one has switched the database
// to the new key, the other's writes, still made under the old key, fail
// their fence and are made again under the new one, before it has seen
// the switch through any watch; an account it wrapped a data key for just
// before the switch is stored with the key re-wrapped.
func TestWritesFollowTheSwitch(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	open := func() (*Store, *keyring.Masters) {
		db, err := etcd.Open(etcd.Config{Endpoints: cluster.Endpoints(), Prefix: "/rotation/", LockTTL: 2 * time.Second}, Logs...)
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		masters := keyring.NewMasters(nextMaster, testMaster)
		masters.Use(testMaster)
		for range 3 { // the other may identify the database first
			if _, err = s.Authenticate(masters, false, AuditEvent{}); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		return s, masters
	}
	one, m1 := open()
	two, m2 := open()
	secrets := map[string]string{"a": linkSealed(t, one, m1, "a")}
	// two wraps a data key under the old key, then one switches.
	dk, wrapped, err := m2.NewDataKey("b")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := dk.Seal(keyring.FieldClientSecret, []byte("secret of b"))
	if err != nil {
		t.Fatal(err)
	}
	secrets["b"] = "secret of b"
	if _, err := one.switchKey(testMaster, nextMaster, nil); err != nil {
		t.Fatal(err)
	}
	if m2.Current().ID() != testMaster.ID() {
		t.Fatal("the second replica followed the switch already; the test proves nothing")
	}
	if err := two.CreateAccount(Account{ID: "b", WrappedKey: wrapped, Secrets: []Secret{{ID: "1", Sealed: sealed}}}, TokenState{}, AuditEvent{Time: time.Now(), Method: "create"}); err != nil {
		t.Fatal(err)
	}
	if m2.Current().ID() != nextMaster.ID() {
		t.Fatal("the second replica wrote without following the switch")
	}
	b, err := two.Account("b")
	if err != nil || keyring.WrappedBy(b.WrappedKey) != nextMaster.ID() {
		t.Fatalf("the account made across the switch has its key wrapped by %s (%v); want %s", keyring.WrappedBy(b.WrappedKey), err, nextMaster.ID())
	}
	if err := two.UpdateTokenState("b", func(ts *TokenState, wrapped []byte) error {
		var err error
		ts.SealedToken, err = keyring.New(m2, nil).Seal("b", wrapped, keyring.FieldAccessToken, []byte("token of b"))
		return err
	}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := one.RotateMasterKey(nextMaster, nil); err != nil {
		t.Fatal(err)
	}
	checkUnder(t, two, nextMaster, secrets)
}
