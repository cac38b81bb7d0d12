package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/internal/keyring"
)

// keyScanner tries keys on every sealed value in a database file or
// backup, as someone holding an old master key (or a data key taken from
// an old copy) and the file would. Sealed values are stored as base64 in
// the records' JSON, so it tries every long base64 string anywhere in the
// file, in live pages and freed ones alike.
type keyScanner struct {
	master   *keyring.MasterKey
	accounts []string
	// databaseID is the id the key check values are bound to; with it, the
	// scanner also tries the master key on the values stored raw (the MAC
	// key, the key check), which a live master key opens in any copy.
	databaseID []byte
	// dataKeys are the data keys found so far, tried on every value.
	dataKeys []*keyring.DataKey
}

var base64Value = regexp.MustCompile(`"([A-Za-z0-9+/]{40,}={0,2})"`)

// Sizes of the sealed values stored raw (not as base64) in the meta
// bucket: a format byte, a 12-byte nonce, the plaintext, a 16-byte tag.
const (
	wrappedMACKeySize = 1 + 12 + 32 + 16
	keyCheckSize      = 1 + 12 + len("credbroker master key check") + 16
)

// scan returns how many values in data its keys open, keeping any data
// key it unwraps.
func (k *keyScanner) scan(t *testing.T, data []byte) int {
	t.Helper()
	if len(data) == 0 {
		t.Fatal("nothing to scan")
	}
	opened := 0
	if k.master != nil && k.databaseID != nil { // the raw values: every window that starts like one
		for i := 0; i+wrappedMACKeySize <= len(data); i++ {
			if data[i] != 1 {
				continue
			}
			if _, err := k.master.UnwrapMACKey(data[i : i+wrappedMACKeySize]); err == nil {
				opened++
			}
			if check := data[i : i+keyCheckSize]; k.master.VerifyKeyCheck(check, k.databaseID) == nil || k.master.VerifyLegacyKeyCheck(check) == nil {
				opened++
			}
		}
	}
	for _, m := range base64Value.FindAllSubmatch(data, -1) {
		blob, err := base64.StdEncoding.DecodeString(string(m[1]))
		if err != nil {
			continue
		}
		if k.master != nil {
			for _, id := range k.accounts {
				if dk, err := k.master.UnwrapDataKey(id, blob); err == nil {
					opened++
					k.dataKeys = append(k.dataKeys, dk)
				}
			}
		}
		for _, dk := range k.dataKeys {
			for _, field := range []keyring.Field{keyring.FieldClientSecret, keyring.FieldAccessToken} {
				if _, err := dk.Open(field, blob); err == nil {
					opened++
				}
			}
		}
	}
	return opened
}

func mustMaster(t *testing.T, text string) *keyring.MasterKey {
	t.Helper()
	m, err := keyring.ParseMasterKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// databaseID reads the id of a stopped broker's database.
func databaseID(t *testing.T, b *broker) []byte {
	t.Helper()
	db, err := bolt.Open(filepath.Join(b.cfg.DataDir, "credbroker.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var id []byte
	_ = db.View(func(tx *bolt.Tx) error {
		id = bytes.Clone(tx.Bucket([]byte("meta")).Get([]byte("database-id")))
		return nil
	})
	if id == nil {
		t.Fatal("the database has no id")
	}
	return id
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
	id := databaseID(t, b)
	old := &keyScanner{master: mustMaster(t, b.cfg.MasterKey), accounts: []string{"acme", "globex"}, databaseID: id}
	if n := old.scan(t, dbFile(t, b)); n < 8 || len(old.dataKeys) < 2 {
		t.Fatalf("before the rekey the old key opened %d values and %d data keys: the scanner proves nothing", n, len(old.dataKeys))
	}

	if _, err := datadir.Rekey(b.cfg.Config, newMasterKey); err != nil {
		t.Fatal(err)
	}
	if n := old.scan(t, dbFile(t, b)); n != 0 {
		t.Fatalf("after the rekey the old master key or old data keys open %d values in the database file", n)
	}
	fresh := &keyScanner{master: mustMaster(t, newMasterKey), accounts: []string{"acme", "globex"}, databaseID: id}
	if n := fresh.scan(t, dbFile(t, b)); n < 8 {
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
	// returns a scanner that finds its values in the file at that moment;
	// unless compacting, the broker compacts on its own meanwhile, it
	// checks that the deletion left them in freed pages.
	// (The writes that follow a deletion, such as the relay of its
	// credential event, may take the freed pages at once: then it tries
	// another account.)
	linkAndDelete := func(name string, compacting bool) *keyScanner {
		t.Helper()
		for try := range 5 {
			id := fmt.Sprintf("%s-%d", name, try)
			b.link(t, id)
			b.token(t, id)
			k := &keyScanner{master: master, accounts: []string{id}}
			if n := k.scan(t, dbFile(t, b)); n < 3 {
				t.Fatalf("the master key opened %d of %s's values: the scanner proves nothing", n, id)
			}
			if _, err := b.accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/" + id}); err != nil {
				t.Fatal(err)
			}
			if n := k.scan(t, dbFile(t, b)); n > 0 || compacting {
				return k
			}
		}
		t.Fatalf("no deleted account of 5 left values in freed pages: this test proves nothing")
		return nil
	}

	gone := linkAndDelete("gone", false)
	backup, _, err := backupOf(t, b, b.keys.admin)
	if err != nil {
		t.Fatal(err)
	}
	if n := gone.scan(t, backup); n != 0 {
		t.Fatalf("a backup holds %d of the deleted account's values", n)
	}

	gone2 := linkAndDelete("gone2", false)
	b.stop()
	if n := gone2.scan(t, dbFile(t, b)); n != 0 {
		t.Fatalf("after shutdown the file holds %d of the deleted account's values", n)
	}

	b.cfg.CompactInterval = 50 * time.Millisecond
	b = b.restart(t)
	gone3 := linkAndDelete("gone3", true) // the freed pages may be gone before the scan
	for deadline := time.Now().Add(10 * time.Second); gone3.scan(t, dbFile(t, b)) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the running broker did not compact the file within 10 s of the deletion")
		}
	}
	if got := b.token(t, "kept").GetAccessToken(); got == "" {
		t.Fatal("the kept account lost its token")
	}
}
