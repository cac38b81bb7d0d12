package store

import (
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
)

// Pruning by count counts every stored event, including those written with
// a change, and the count is right again after the store is reopened.
func TestPruneAuditKeepsCount(t *testing.T) {
	s, path := openTemp(t)
	now := time.Now()
	var evs []AuditEvent
	for i := range 5 {
		evs = append(evs, AuditEvent{Time: now.Add(time.Duration(i) * time.Second), Method: "get"})
	}
	if err := s.AppendAudit(evs); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateCallerKey(CallerKey{ID: "k", Role: "caller"}, AuditEvent{Time: now.Add(time.Minute), Method: "create"}); err != nil {
		t.Fatal(err)
	}
	longAgo := now.Add(-time.Hour)
	if n, err := s.PruneAudit(longAgo, 4, 100, nil); err != nil || n != 2 {
		t.Fatalf("pruning 6 events to 4 deleted %d (%v), want 2", n, err)
	}
	s.Close()
	s, err := Open(path, time.Second)
	if err == nil {
		_, err = s.Authenticate(keyring.NewMasters(testMaster), false, AuditEvent{})
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.PruneAudit(longAgo, 3, 100, nil); err != nil || n != 1 {
		t.Fatalf("after reopening, pruning 4 events to 3 deleted %d (%v), want 1", n, err)
	}
	var left []string
	if err := s.ScanAudit(AuditPos{}, func(_ AuditPos, ev AuditEvent) bool { left = append(left, ev.Method); return true }); err != nil {
		t.Fatal(err)
	}
	if len(left) != 3 || left[0] != "create" {
		t.Fatalf("left %v, want the newest 3 with the change's event first", left)
	}
}

// Pruning by count deletes only expendable events, oldest first; the
// others go by age only.
func TestPruneAuditByCountSparesOthers(t *testing.T) {
	s, _ := openTemp(t)
	now := time.Now()
	var evs []AuditEvent
	for i := range 10 {
		method := "call"
		if i%5 == 0 {
			method = "admin"
		}
		evs = append(evs, AuditEvent{Time: now.Add(time.Duration(i) * time.Second), Method: method})
	}
	if err := s.AppendAudit(evs); err != nil {
		t.Fatal(err)
	}
	calls := func(ev AuditEvent) bool { return ev.Method == "call" }
	if n, err := s.PruneAudit(now.Add(-time.Hour), 4, 100, calls); err != nil || n != 6 {
		t.Fatalf("pruning 10 events to 4 deleted %d (%v), want 6 calls", n, err)
	}
	var left []string
	_ = s.ScanAudit(AuditPos{}, func(_ AuditPos, ev AuditEvent) bool { left = append(left, ev.Method); return true })
	if strings.Join(left, ",") != "call,call,admin,admin" {
		t.Fatalf("left %v, want the newest calls and every admin event", left)
	}
	if n, err := s.PruneAudit(now.Add(time.Hour), 4, 100, calls); err != nil || n != 4 {
		t.Fatalf("pruning by age deleted %d (%v), want all 4", n, err)
	}
}

// ScanAudit lists every event newest first, across the windows of time it
// reads in: events from ten years ago, hours ago, minutes ago, and ahead
// of this clock (another replica's).
func TestScanAuditAcrossWindows(t *testing.T) {
	s, _ := openTemp(t)
	now := time.Now()
	ages := []time.Duration{-time.Hour, 10 * time.Minute, 3 * time.Hour, 30 * time.Hour, 10 * 365 * 24 * time.Hour}
	var evs []AuditEvent
	for i, age := range ages {
		evs = append(evs, AuditEvent{Time: now.Add(-age), Method: string(rune('a' + i))})
	}
	if err := s.AppendAudit(evs); err != nil {
		t.Fatal(err)
	}
	scan := func(before AuditPos) string {
		var got []string
		if err := s.ScanAudit(before, func(_ AuditPos, ev AuditEvent) bool { got = append(got, ev.Method); return true }); err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, "")
	}
	if got := scan(AuditPos{}); got != "abcde" {
		t.Fatalf("every event, newest first: %q", got)
	}
	if got := scan(AuditPos{Time: now.Add(-2 * time.Hour)}); got != "cde" {
		t.Fatalf("events before two hours ago: %q", got)
	}
}
