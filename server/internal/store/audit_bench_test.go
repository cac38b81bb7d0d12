package store

import (
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkAppendAudit measures one durable commit of a batch of events,
// the cost each group commit pays (fsync included).
func BenchmarkAppendAudit(b *testing.B) {
	for _, n := range []int{1, 25} {
		b.Run(map[int]string{1: "batch1", 25: "batch25"}[n], func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "db"), time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
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
