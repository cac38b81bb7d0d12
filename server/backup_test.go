package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/datadir"
)

// backupOf streams a backup with the given caller key; it returns the
// bytes and the last message.
func backupOf(t *testing.T, b *broker, key string) ([]byte, *credbrokerv1.BackupResponse, error) {
	t.Helper()
	stream, err := credbrokerv1.NewBackupServiceClient(b.dial(t, key, nil)).Backup(context.Background(), &credbrokerv1.BackupRequest{})
	if err != nil {
		return nil, nil, err
	}
	var data []byte
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			t.Fatal("the stream ended without a last message")
		}
		if err != nil {
			return data, nil, err
		}
		data = append(data, resp.GetData()...)
		if resp.GetSha256() != "" {
			if _, err := stream.Recv(); err != io.EOF {
				t.Fatalf("a message after the last one: %v", err)
			}
			return data, resp, nil
		}
	}
}

// A backup of a running broker is a whole, checkable database in which no
// secret or token appears in the clear, and it is audited.
func TestBackup(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	b.linkAPIKey(t, "keyed")
	token := b.token(t, "acme").GetAccessToken()

	data, last, err := backupOf(t, b, b.keys.admin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != last.GetSha256() || int64(len(data)) != last.GetSizeBytes() {
		t.Fatalf("got %d bytes, sha256 %x; the broker says %d bytes, sha256 %s", len(data), sum, last.GetSizeBytes(), last.GetSha256())
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := datadir.CheckBackup(path); err != nil {
		t.Fatalf("the backup does not check out: %v", err)
	}
	assertAbsent(t, "backup", data, clientSecret, apiKey, token, b.keys.admin, b.keys.svc)
	if staged, _ := filepath.Glob(filepath.Join(b.cfg.DataDir, "backup-*")); len(staged) != 0 {
		t.Fatalf("staged snapshots left behind: %v", staged)
	}

	// Damage to its structure is found: a cut-off copy, and one whose two
	// meta pages are overwritten. (Damage inside a value is for the
	// backup's SHA-256 to find.)
	metaless := bytes.Clone(data)
	for _, page := range []int{0, 1} {
		copy(metaless[page*os.Getpagesize()+16:], make([]byte, 64))
	}
	for name, damaged := range map[string][]byte{"truncated": data[:len(data)/2], "metaless": metaless} {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := datadir.CheckBackup(p); err == nil {
			t.Errorf("a %s backup passed the check", name)
		}
	}

	events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var audited *credbrokerv1.AuditEvent
	for _, ev := range events.GetEvents() {
		if ev.GetMethod() == "/credbroker.v1.BackupService/Backup" {
			audited = ev
		}
	}
	if audited == nil || audited.GetCode() != "OK" || !strings.Contains(audited.GetDetail(), last.GetSha256()) || audited.GetPrincipal() != "callerKeys/bootstrap-admin" {
		t.Fatalf("audit event of the backup: %v", audited)
	}
}

func TestBackupRefusals(t *testing.T) {
	b, fail := startFailingAudit(t)
	b.link(t, "acme")

	_, _, err := backupOf(t, b, b.keys.svc)
	wantCode(t, err, codes.PermissionDenied, "")
	_, _, err = backupOf(t, b, "")
	wantCode(t, err, codes.Unauthenticated, "")
	events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{Principal: "callerKeys/svc"})
	if err != nil || len(events.GetEvents()) == 0 || events.GetEvents()[0].GetCode() != "PERMISSION_DENIED" {
		t.Fatalf("the refused backup was not audited: %v %v", events, err)
	}

	fail.Store(true)
	data, _, err := backupOf(t, b, b.keys.admin)
	wantCode(t, err, codes.Unavailable, "AUDIT_UNAVAILABLE")
	if len(data) != 0 {
		t.Fatalf("%d bytes of backup left without an audit event", len(data))
	}
}

// Restore copies the backup once into a staging file in the data directory
// and checks that copy, not the backup, before putting it in place: a
// symlink planted at the staging path is not followed, the data directory
// gets its mode 0700 back, and a backup that does not match its checksum
// changes nothing.
func TestRestoreStagesOneCheckedCopy(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	data, last, err := backupOf(t, b, b.keys.admin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	backup := filepath.Join(dir, "broker.backup")
	if os.WriteFile(backup, data, 0o600) != nil || os.WriteFile(backup+datadir.ChecksumSuffix, []byte(last.GetSha256()+"  broker.backup\n"), 0o600) != nil {
		t.Fatal("could not write the backup")
	}
	b.link(t, "after-backup")
	b.stop()
	cfg := b.cfg

	outside := filepath.Join(dir, "outside")
	if err := os.WriteFile(outside, []byte("not the broker's"), 0o600); err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(cfg.DataDir, "credbroker.db.restoring")
	if err := os.Symlink(outside, staging); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// What a crash left in the audit journal belongs to the database it
	// ran on: it goes aside with it.
	left := filepath.Join(cfg.DataDir, datadir.AuditJournalDir, "0000000000000007.journal")
	if os.MkdirAll(filepath.Dir(left), 0o700) != nil || os.WriteFile(left, []byte("a crash's events"), 0o600) != nil {
		t.Fatal("could not leave a journal")
	}
	res, err := datadir.Restore(cfg.Config, backup, false)
	if err != nil || !res.Checksummed || res.Previous == "" {
		t.Fatalf("Restore: %+v, %v", res, err)
	}
	if got, err := os.ReadFile(filepath.Join(res.Previous+"."+datadir.AuditJournalDir, filepath.Base(left))); err != nil || string(got) != "a crash's events" {
		t.Fatalf("the replaced database's journal: %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Dir(left)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the replaced database's journal is still in place: %v", err)
	}
	if got, _ := os.ReadFile(outside); string(got) != "not the broker's" {
		t.Fatalf("restore wrote %d bytes through the symlink at the staging path", len(got))
	}
	if fi, err := os.Lstat(filepath.Join(cfg.DataDir, "credbroker.db")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the restored database is not a regular file: %v, %v", fi, err)
	}
	if _, err := os.Lstat(staging); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the staging file is left: %v", err)
	}
	if fi, err := os.Stat(cfg.DataDir); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o700 {
		t.Fatalf("data directory mode after restore: %v", fi.Mode().Perm())
	}

	// A backup that does not match its checksum changes nothing.
	damaged := filepath.Join(dir, "damaged.backup")
	flipped := bytes.Clone(data)
	flipped[len(flipped)/2] ^= 0xff
	if os.WriteFile(damaged, flipped, 0o600) != nil || os.WriteFile(damaged+datadir.ChecksumSuffix, []byte(last.GetSha256()+"  damaged.backup\n"), 0o600) != nil {
		t.Fatal("could not write the damaged backup")
	}
	before := dirSnapshot(t, cfg.DataDir)
	if _, err := datadir.Restore(cfg.Config, damaged, false); err == nil || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("Restore of a backup that does not match its checksum: %v", err)
	}
	if after := dirSnapshot(t, cfg.DataDir); !maps.Equal(before, after) {
		t.Fatalf("a refused restore changed the data directory: %v, then %v", before, after)
	}

	// The restored broker serves the accounts of the backup.
	b = startWith(t, cfg, b.fake, b.logs)
	b.token(t, "acme")
	_, err = b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/after-backup"})
	wantCode(t, err, codes.NotFound, "")
}

// dirSnapshot maps each file in dir to its SHA-256.
func dirSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.IsDir() {
			out[e.Name()] = "directory"
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		out[e.Name()] = hex.EncodeToString(sum[:])
	}
	return out
}
