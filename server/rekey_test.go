package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

const newMasterKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// After a rekey the broker starts only with the new master key and serves
// as before: linked secrets and cached tokens open, caller keys still
// authenticate, and the rekey is in the audit trail. Re-running it is a
// no-op; a wrong current key, the same key again or a running broker are
// refused without changing anything.
func TestRekey(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	b.link(t, "globex")
	before := b.token(t, "acme").GetAccessToken()
	running := b.cfg
	running.LockTimeout = 50 * time.Millisecond
	if _, err := datadir.Rekey(running.Config, newMasterKey); !errors.Is(err, store.ErrLocked) || !strings.Contains(err.Error(), "stop the broker") {
		t.Fatalf("rekey with the broker running: %v", err)
	}
	b.stop()
	cfg := b.cfg

	wrong := cfg
	wrong.MasterKey = "ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY="
	if _, err := datadir.Rekey(wrong.Config, newMasterKey); !errors.Is(err, keyring.ErrWrongMasterKey) {
		t.Fatalf("rekey with a wrong current key: %v", err)
	}
	if _, err := datadir.Rekey(cfg.Config, cfg.MasterKey); err == nil || !strings.Contains(err.Error(), "is the current one") {
		t.Fatalf("rekey to the same key: %v", err)
	}
	res, err := datadir.Rekey(cfg.Config, newMasterKey)
	if err != nil || res.Accounts != 2 || res.AlreadyDone {
		t.Fatalf("rekey: %+v, %v", res, err)
	}
	if res, err := datadir.Rekey(cfg.Config, newMasterKey); err != nil || !res.AlreadyDone {
		t.Fatalf("re-run of a finished rekey: %+v, %v", res, err)
	}

	if _, err := server.New(cfg); !errors.Is(err, keyring.ErrWrongMasterKey) {
		t.Fatalf("start with the old master key after rekey: %v", err)
	}
	cfg.MasterKey = newMasterKey
	b.cfg = cfg
	b = b.restart(t)
	if got := b.token(t, "acme").GetAccessToken(); got != before {
		t.Fatal("the cached token was not served after the rekey")
	}
	if _, err := b.accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/globex"}); err != nil {
		t.Fatalf("admin key after rekey: %v", err)
	}
	events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	switched, moved := false, false
	for _, ev := range events.GetEvents() {
		if ev.GetMethod() == "rekey" && ev.GetCode() == codes.OK.String() && strings.HasPrefix(ev.GetPrincipal(), "unix-uid:") {
			switched = switched || strings.HasPrefix(ev.GetDetail(), "switched the database")
			moved = moved || strings.Contains(ev.GetDetail(), "this run moved 2 accounts")
		}
	}
	if !switched || !moved {
		t.Fatalf("no rekey event in the audit trail: %v", events.GetEvents())
	}
}
