package store

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkAppendAudit measures one durable commit of a batch of events,
// the cost each group commit pays (fsync included).
func BenchmarkAppendAudit(b *testing.B) {
	for _, n := range []int{1, 25} {
		b.Run(map[int]string{1: "batch1", 25: "batch25"}[n], func(b *testing.B) {
			s := openAt(b, filepath.Join(b.TempDir(), "db"))
			evs := make([]AuditEvent, n)
			for i := range evs {
				evs[i] = AuditEvent{Time: time.Now(), Principal: "spiffe://example.org/billing", Method: "/credbroker.v1.TokenService/GetToken",
					Resource: "accounts/bench", Code: "OK", TokenFingerprint: "hmac-sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", PeerAddress: "127.0.0.1:40000"}
			}
			for b.Loop() {
				if err := s.AppendAudit(evs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCompact measures a compaction of a database holding 1,000
// accounts and an audit trail of 100,000 events (about 40 MB): the time
// during which calls wait after a deletion.
func BenchmarkCompact(b *testing.B) {
	s := openAt(b, filepath.Join(b.TempDir(), "db"))
	for i := range 1000 {
		a := Account{ID: fmt.Sprintf("acct-%d", i), Provider: "jumpcloud_service_account", ClientID: "client", WrappedKey: make([]byte, 61),
			Secrets: []Secret{{ID: "sha256:0123456789ab", Sealed: make([]byte, 80)}}}
		if err := s.CreateAccount(a, TokenState{State: "active", SealedToken: make([]byte, 120)}, AuditEvent{Time: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	evs := make([]AuditEvent, 1000)
	for i := range evs {
		evs[i] = AuditEvent{Time: time.Now(), Principal: "spiffe://example.org/billing", Method: "/credbroker.v1.TokenService/GetToken",
			Resource: "accounts/bench", Code: "OK", TokenFingerprint: "hmac-sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", PeerAddress: "127.0.0.1:40000"}
	}
	for range 100 {
		if err := s.AppendAudit(evs); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if err := s.Compact(); err != nil {
			b.Fatal(err)
		}
	}
}
