package gate

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Refusals from many addresses, methods and principals are held and
// written in bounded space: at most maxRefusalTallies events, one more for
// the other peers, each naming at most maxRefusalNames of each.
func TestRefusalsStayBounded(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	master, _ := keyring.ParseMasterKey("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")
	if _, err := st.Authenticate(keyring.NewMasters(master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	al := audit.New(audit.Config{}, st, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { al.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	r := newRefusals(1, 20, time.Hour, al, slog.New(slog.DiscardHandler), time.Now)
	const calls = 300
	for i := range calls {
		c := &Call{Peer: fmt.Sprintf("10.0.%d.%d:%d", i/256, i%256, 1000+i), Method: fmt.Sprintf("/m%d", i%10), Principal: fmt.Sprintf("callerKeys/k%d", i), Time: time.Now(), unproven: true}
		r.add(c, codes.Unauthenticated)
	}
	r.flush()
	events, _, err := al.List(audit.Query{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != maxRefusalTallies+1 {
		t.Fatalf("%d events, want %d", len(events), maxRefusalTallies+1)
	}
	total := 0
	for _, ev := range events {
		var n int
		if _, err := fmt.Sscanf(ev.Detail, "%d calls", &n); err != nil || ev.Method != RefusalMethod || ev.Code != "UNAUTHENTICATED" || ev.Principal != "" {
			t.Fatalf("event %+v", ev)
		}
		total += n
		if ev.PeerAddress == otherPeers {
			if n != calls-maxRefusalTallies || strings.Count(ev.Detail, "/m") != maxRefusalNames || strings.Count(ev.Detail, "callerKeys/") != maxRefusalNames ||
				!strings.Contains(ev.Detail, fmt.Sprintf("others %d", calls-maxRefusalTallies-maxRefusalNames)) {
				t.Fatalf("the other peers' event: %q", ev.Detail)
			}
		}
	}
	if total != calls {
		t.Fatalf("the events count %d calls, want %d", total, calls)
	}
}

func TestPeerKey(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:5000":             "127.0.0.1",
		"[::1]:5000":                 "::/64",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[::ffff:10.1.2.3]:80":       "10.1.2.3",
		"":                           "",
		"pipe":                       "pipe",
	} {
		if got := peerKey(addr); got != want {
			t.Errorf("peerKey(%q) = %q, want %q", addr, got, want)
		}
	}
}
