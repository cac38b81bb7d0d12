package server_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/internal/seal"
	"github.com/credbroker/credbroker/server/internal/store"
)

// keyScanner tries keys on every sealed value in a database file or
// backup, as someone holding an old master key (or a data key taken from
// an old copy) and the file would. Sealed values are stored as base64 in
// the records' JSON, so it tries every long base64 string anywhere in the
// file, in live pages and freed ones alike.
type keyScanner struct {
	master   *seal.MasterKey
	accounts []string
	// dataKeys are the data keys found so far, tried on every value.
	dataKeys []*seal.DataKey
}

var base64Value = regexp.MustCompile(`"([A-Za-z0-9+/]{40,}={0,2})"`)

// scan returns how many values in data its keys open, keeping any data
// key it unwraps.
func (k *keyScanner) scan(t *testing.T, data []byte) int {
	t.Helper()
	if len(data) == 0 {
		t.Fatal("nothing to scan")
	}
	opened := 0
	for _, m := range base64Value.FindAllSubmatch(data, -1) {
		blob, err := base64.StdEncoding.DecodeString(string(m[1]))
		if err != nil {
			continue
		}
		if k.master != nil {
			if k.master.VerifyKeyCheck(blob) == nil {
				opened++
			}
			if _, err := k.master.UnwrapMACKey(blob); err == nil {
				opened++
			}
			for _, id := range k.accounts {
				if dk, err := k.master.UnwrapDataKey(id, blob); err == nil {
					opened++
					k.dataKeys = append(k.dataKeys, dk)
				}
			}
		}
		for _, dk := range k.dataKeys {
			for _, field := range []string{store.FieldClientSecret, store.FieldAccessToken} {
				if _, err := dk.Open(field, blob); err == nil {
					opened++
				}
			}
		}
	}
	return opened
}

func mustMaster(t *testing.T, text string) *seal.MasterKey {
	t.Helper()
	m, err := seal.ParseMasterKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func dbFile(t *testing.T, b *broker) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b.cfg.DataDir, "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// After rekey, neither the database file nor a backup taken afterwards
// holds anything that the old master key opens, nor anything that the old
// data keys (which an old backup would give away) open.
func TestRekeyLeavesNothingForTheOldKey(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	b.link(t, "globex")
	b.token(t, "acme")
	b.stop()
	old := &keyScanner{master: mustMaster(t, b.cfg.MasterKey), accounts: []string{"acme", "globex"}}
	if n := old.scan(t, dbFile(t, b)); n < 6 || len(old.dataKeys) < 2 {
		t.Fatalf("before the rekey the old key opened %d values and %d data keys: the scanner proves nothing", n, len(old.dataKeys))
	}

	if _, err := server.Rekey(b.cfg, newMasterKey); err != nil {
		t.Fatal(err)
	}
	if n := old.scan(t, dbFile(t, b)); n != 0 {
		t.Fatalf("after the rekey the old master key or old data keys open %d values in the database file", n)
	}
	fresh := &keyScanner{master: mustMaster(t, newMasterKey), accounts: []string{"acme", "globex"}}
	if n := fresh.scan(t, dbFile(t, b)); n < 6 {
		t.Fatalf("the new key opens only %d values in the file", n)
	}

	b.cfg.MasterKey = newMasterKey
	b = b.restart(t)
	b.token(t, "acme")
	backup, _, err := backupOf(t, b, b.keys.admin)
	if err != nil {
		t.Fatal(err)
	}
	if n := old.scan(t, backup); n != 0 {
		t.Fatalf("the old keys open %d values in a backup taken after the rekey", n)
	}
}

// A deleted account's data key and secret never reach a backup, even one
// taken before the file is compacted, and leave the database file when the
// broker compacts it: at shutdown, and while it runs within
// CompactInterval.
func TestDeletedAccountLeavesNothing(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.CompactInterval = time.Hour // only at shutdown, until the last part
	b := startWith(t, cfg, fake, logs)
	master := mustMaster(t, cfg.MasterKey)
	b.link(t, "kept")
	// linkAndDelete links an account, gets its token and deletes it, and
	// returns a scanner that finds its values in the file at that moment.
	linkAndDelete := func(id string) *keyScanner {
		t.Helper()
		b.link(t, id)
		b.token(t, id)
		k := &keyScanner{master: master, accounts: []string{id}}
		if n := k.scan(t, dbFile(t, b)); n < 3 {
			t.Fatalf("the master key opened %d of %s's values: the scanner proves nothing", n, id)
		}
		if _, err := b.accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/" + id}); err != nil {
			t.Fatal(err)
		}
		if n := k.scan(t, dbFile(t, b)); n == 0 {
			t.Fatalf("%s's values are not in freed pages after its deletion: this test proves nothing", id)
		}
		return k
	}

	gone := linkAndDelete("gone")
	backup, _, err := backupOf(t, b, b.keys.admin)
	if err != nil {
		t.Fatal(err)
	}
	if n := gone.scan(t, backup); n != 0 {
		t.Fatalf("a backup holds %d of the deleted account's values", n)
	}

	gone2 := linkAndDelete("gone2")
	b.stop()
	if n := gone2.scan(t, dbFile(t, b)); n != 0 {
		t.Fatalf("after shutdown the file holds %d of the deleted account's values", n)
	}

	b.cfg.CompactInterval = 50 * time.Millisecond
	b = b.restart(t)
	gone3 := linkAndDelete("gone3")
	for deadline := time.Now().Add(10 * time.Second); gone3.scan(t, dbFile(t, b)) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the running broker did not compact the file within 10 s of the deletion")
		}
	}
	if got := b.token(t, "kept").GetAccessToken(); got == "" {
		t.Fatal("the kept account lost its token")
	}
}
