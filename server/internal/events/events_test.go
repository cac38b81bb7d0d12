package events

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// newService is the events of a new bbolt store holding n account_linked
// events in its log.
func newService(t *testing.T, n int) (*Service, *store.Store) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "credbroker.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	master, err := keyring.ParseMasterKey("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Authenticate(keyring.NewMasters(master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("a%d", i)
		if err := st.CreateAccount(store.Account{ID: id}, store.TokenState{}, store.AuditEvent{Time: time.Now(), Method: "link", Resource: "accounts/" + id, Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	s := New(Config{Retention: time.Hour}, st)
	if err := s.RelayAll(nil); err != nil {
		t.Fatal(err)
	}
	return s, st
}

// Events are relayed into the log in the order of their changes, numbered
// from 1; a watch gets them a page at a time, after the position asked.
func TestRelayAndWatch(t *testing.T) {
	s, _ := newService(t, 150)
	var got []string
	ctx, cancel := context.WithCancel(context.Background())
	err := s.Watch(ctx, 10, func(evs []store.Event) (bool, error) {
		for _, e := range evs {
			if want := uint64(len(got) + 11); e.Seq != want || e.Account != fmt.Sprintf("a%d", want-1) || e.Kind != store.EventAccountLinked {
				t.Fatalf("event %d: %+v", want, e)
			}
			got = append(got, e.ID)
		}
		if len(got) == 140 {
			cancel()
		}
		return true, nil
	})
	if !errors.Is(err, context.Canceled) || len(got) != 140 {
		t.Fatalf("Watch = %v after %d events", err, len(got))
	}
}

// A watch that falls behind events deleted meanwhile (Retention) ends with
// ErrExpired, not with a gap.
func TestWatchBehindDeletedEvents(t *testing.T) {
	s, st := newService(t, 150)
	err := s.Watch(context.Background(), 0, func(evs []store.Event) (bool, error) {
		// While the watcher reads its first page, the rest but the newest
		// goes.
		if _, err := st.PruneEvents(time.Now().Add(time.Hour), 1000); err != nil {
			t.Fatal(err)
		}
		return true, nil
	})
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("Watch = %v, want ErrExpired", err)
	}
	oldest, newest, err := st.EventLog()
	if err != nil || oldest != 150 || newest != 150 {
		t.Fatalf("after pruning: events %d to %d (%v), want the newest alone", oldest, newest, err)
	}
}
