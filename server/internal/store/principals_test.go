package store

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// typedForTest keeps principals with a scheme and types the others as "t:".
func typedForTest(p string) []string {
	if strings.Contains(p, ":") {
		return []string{p}
	}
	return []string{"t:" + p, "u:" + p}
}

func grantPrincipals(t *testing.T, s *Store, id string) []string {
	t.Helper()
	a, err := s.Account(id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, g := range a.Grants {
		out = append(out, g.Principal)
	}
	return out
}

func auditMethods(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	if err := s.ScanAudit(AuditPos{}, func(_ AuditPos, ev AuditEvent) bool { out = append(out, ev.Method); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TypePrincipals rewrites grants and admin principals in one transaction
// with one audit event, and once only: a second call writes nothing.
func TestTypePrincipals(t *testing.T) {
	s, path := openTemp(t)
	now := time.Now()
	a := Account{ID: "a", Grants: []Grant{{Principal: "b", Creator: "x"}, {Principal: "s:a"}, {Principal: "c"}}}
	if err := s.CreateAccount(a, TokenState{}, AuditEvent{Time: now, Method: "create"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccount(Account{ID: "kept", Grants: []Grant{{Principal: "s:k"}}}, TokenState{}, AuditEvent{Time: now, Method: "create"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAdmin(AdminPrincipal{Principal: "root", Creator: "boot"}, AuditEvent{Time: now, Method: "admin"}); err != nil {
		t.Fatal(err)
	}

	changed, err := s.TypePrincipals(typedForTest, AuditEvent{Time: now.Add(time.Second), Method: "type"})
	if err != nil || !changed {
		t.Fatalf("TypePrincipals = %v, %v", changed, err)
	}
	if got, want := grantPrincipals(t, s, "a"), []string{"s:a", "t:b", "t:c", "u:b", "u:c"}; !slices.Equal(got, want) {
		t.Fatalf("grants = %q, want %q", got, want)
	}
	if a, _ := s.Account("a"); a.Grants[1].Creator != "x" {
		t.Fatalf("a typed grant lost its creator: %+v", a.Grants[1])
	}
	admins, err := s.Admins("", 10)
	if err != nil || len(admins) != 2 || admins[0].Principal != "t:root" || admins[1].Principal != "u:root" || admins[0].Creator != "boot" {
		t.Fatalf("admins = %+v, %v", admins, err)
	}
	if got := auditMethods(t, s); !slices.Equal(got, []string{"type", "admin", "create", "create"}) {
		t.Fatalf("audit trail = %q", got)
	}

	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path)
	if changed, err := s.TypePrincipals(typedForTest, AuditEvent{Time: now.Add(time.Minute), Method: "type"}); err != nil || changed {
		t.Fatalf("second TypePrincipals = %v, %v", changed, err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the second TypePrincipals wrote to the database")
	}
	if got := grantPrincipals(t, s, "a"); len(got) != 5 {
		t.Fatalf("grants after the second call = %q", got)
	}
}

// A store with nothing untyped is marked without an audit event.
func TestTypePrincipalsOfANewStore(t *testing.T) {
	s, _ := openTemp(t)
	if changed, err := s.TypePrincipals(typedForTest, AuditEvent{Method: "type"}); err != nil || changed {
		t.Fatalf("TypePrincipals = %v, %v", changed, err)
	}
	if got := auditMethods(t, s); len(got) != 0 {
		t.Fatalf("audit trail = %q", got)
	}
	if done, err := s.meta(principalsTypedKey); err != nil || done == nil {
		t.Fatalf("not marked: %q, %v", done, err)
	}
}

// A failure part-way (an unreadable admin record, met after the grants
// were rewritten) leaves everything as it was, unmarked, to be retried.
func TestTypePrincipalsIsAllOrNothing(t *testing.T) {
	s, _ := openTemp(t)
	if err := s.CreateAccount(Account{ID: "a", Grants: []Grant{{Principal: "b"}}}, TokenState{}, AuditEvent{Method: "create"}); err != nil {
		t.Fatal(err)
	}
	err := s.db.(*boltdb.DB).Bulk(func(b *boltdb.Bulk) error {
		return b.Put(key(adminsBucket, "broken"), s.masters.SealRecord(adminsBucket, []byte("broken"), []byte(`{"v":1,`)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := s.TypePrincipals(typedForTest, AuditEvent{Method: "type"}); err == nil || changed {
		t.Fatalf("TypePrincipals with a broken admin record = %v, %v", changed, err)
	}
	if got := grantPrincipals(t, s, "a"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("grants after a failed TypePrincipals = %q", got)
	}
	if done, _ := s.meta(principalsTypedKey); done != nil || len(auditMethods(t, s)) != 1 {
		t.Fatal("a failed TypePrincipals marked the store or wrote its audit event")
	}
}
