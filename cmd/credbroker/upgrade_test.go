package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// legacyDatabase is a database written by the build before records were
// tagged (200 linked accounts granted to callerKeys/checker, with cached
// tokens), with the caller keys of testdata/legacy-v1.keys, under
// e2eMasterKey.
func legacyDatabase(t *testing.T) (db []byte, keys map[string]string) {
	t.Helper()
	f, err := os.Open("testdata/legacy-v1.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if db, err = io.ReadAll(zr); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile("testdata/legacy-v1.keys")
	if err != nil {
		t.Fatal(err)
	}
	keys = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(text)), "\n") {
		name, key, _ := strings.Cut(line, " ")
		keys[name] = key
	}
	return db, keys
}

// upgraded says whether the database file at path has been tagged: it has
// a database id. It opens the file read-only, as a crashed broker left it.
func upgraded(t *testing.T, path string) bool {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("the database does not open after a kill: %v", err)
	}
	defer db.Close()
	var id []byte
	_ = db.View(func(tx *bolt.Tx) error { id = tx.Bucket([]byte("meta")).Get([]byte("database-id")); return nil })
	return id != nil
}

// TestUpgradeKilledMidway starts this build on a database of the previous
// one and kills it at many points of the upgrade that tags its records in
// one transaction, each time on a fresh copy. Every time the file opens,
// either as it was or wholly upgraded, and the next start completes the
// upgrade: every account's secret still opens (the fake issues tokens
// only for the right one), the caller key still works, and the upgrade is
// audited exactly once.
func TestUpgradeKilledMidway(t *testing.T) {
	e := newE2ESetup(t, "--rate-limit", "-1")
	pristine, keys := legacyDatabase(t)
	serve := func(dir string) *exec.Cmd {
		cmd := exec.Command(e.bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--proxy-listen", "off", "--ops-listen", "off", "--hub-listen", "off"}, append(e.args, "--data-dir", dir)...)...)
		cmd.Env = append(os.Environ(), "CREDBROKER_MASTER_KEY="+e2eMasterKey)
		return cmd
	}
	var midway, before, after int
	var dir string
	// killAt starts on a fresh copy, kills the start after delay, and
	// says what it left: "before" the upgrade wrote, "midway" or "after".
	killAt := func(i int, delay time.Duration) string {
		dir = filepath.Join(t.TempDir(), fmt.Sprint("copy", i))
		path := filepath.Join(dir, "credbroker.db")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, pristine, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := serve(dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		now, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case upgraded(t, path):
			after++
			return "after"
		case !bytes.Equal(now, pristine):
			midway++ // pages of the upgrade written, its commit not
			return "midway"
		}
		before++
		return "before"
	}
	// Kill later and later, until the upgrade has been seen complete a few
	// times in a row: the steps follow the machine's speed.
	var lastBefore, firstAfter time.Duration
	i := 0
	for streak := 0; streak < 3 && i < 800; i++ {
		delay := time.Duration(i) * 250 * time.Microsecond
		switch killAt(i, delay) {
		case "after":
			if streak == 0 {
				firstAfter = delay
			}
			streak++
		case "before":
			lastBefore, streak = delay, 0
		default:
			streak = 0
		}
	}
	// On a busy machine the upgrade can fall between two steps: kill
	// within the last step before it completed, at finer times.
	for j := 0; midway == 0 && j < 200 && firstAfter > lastBefore; j++ {
		killAt(i+j, lastBefore+time.Duration(rand.Int64N(int64(firstAfter-lastBefore))))
	}
	t.Logf("killed %d times before the upgrade wrote, %d times during it, %d times after it", before, midway, after)
	if midway == 0 {
		t.Fatal("no start was killed in the middle of the upgrade: the test proved nothing")
	}

	// The last copy (upgraded, or cut off by a finer kill): start it, and
	// check that the upgrade completed.
	var logs bytes.Buffer
	b := startBinary(t, e.bin, &logs, append(e.args, "--data-dir", dir)...)
	tokens := credbrokerv1.NewTokenServiceClient(b.connect(t, keyCreds(keys["checker"])...))
	for i := range 200 {
		if _, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: fmt.Sprintf("accounts/acct-%d", i)}); err != nil {
			t.Fatalf("token of acct-%d after the upgrade: %v", i, err)
		}
	}
	audit := credbrokerv1.NewAuditServiceClient(b.connect(t, keyCreds(keys["admin"])...))
	events, err := audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{Principal: "credbroker", PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	tagged := 0
	for _, ev := range events.GetEvents() {
		if ev.GetMethod() == "tag_records" {
			tagged++
		}
	}
	if tagged != 1 {
		t.Fatalf("%d tag_records events, want 1", tagged)
	}
	b.stop(t)
	logs.Reset()
	b = startBinary(t, e.bin, &logs, append(e.args, "--data-dir", dir)...)
	b.stop(t)
	if strings.Contains(logs.String(), "upgraded a database") || strings.Contains(logs.String(), "integrity") {
		t.Fatalf("a second start upgraded again or found a bad record:\n%s", logs.String())
	}
}
