package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/datadir"
)

func backup(args []string, stdout, stderr io.Writer) error {
	var (
		s   = &session{name: "backup", stdout: stdout, stderr: stderr}
		out string
	)
	fs := remoteFlagSet("backup", "credbroker backup --out FILE [flags]", stderr, `Takes a consistent snapshot of a running broker's database over its admin API
(BackupService/Backup) and writes it to --out, which must not exist yet. The
broker goes on serving meanwhile. The file is checked (its SHA-256 against
the broker's, and every database page) before it gets its name; its SHA-256
goes beside it into --out.sha256 (sha256sum -c reads it), which restore
checks.

The backup holds secrets sealed under the master key, which it does not
contain: keep the master key safe separately, or the backup cannot be
restored. Needs an admin identity.`, &s.remote)
	fs.StringVar(&out, "out", "", "file to write the backup to (required)")
	if err := parseRemote(fs, args); err != nil {
		return err
	}
	if out == "" {
		return &usageError{"--out is required"}
	}
	for _, p := range []string{out, out + datadir.ChecksumSuffix} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists already; choose a new name", p)
		}
	}
	c, err := s.remote.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.CreateTemp(filepath.Dir(out), ".credbroker-backup-*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	size, digest, err := receiveBackup(ctx, credbrokerv1.NewBackupServiceClient(c.Conn()), tmp)
	err = s.explain(err)
	if err = errors.Join(err, tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	if err := datadir.SaveBackup(tmp.Name(), out, digest); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes) and its SHA-256 in %s%s\nIt is useless without the broker's master key, which it does not contain.\n",
		out, size, out, datadir.ChecksumSuffix)
	return nil
}

// receiveBackup writes the streamed snapshot to w and checks its size and
// SHA-256 against the broker's.
func receiveBackup(ctx context.Context, bs credbrokerv1.BackupServiceClient, w io.Writer) (int64, string, error) {
	stream, err := bs.Backup(ctx, &credbrokerv1.BackupRequest{})
	if err != nil {
		return 0, "", err
	}
	sum := sha256.New()
	var size int64
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return 0, "", errors.New("the broker ended the backup before its last piece; nothing was written")
		}
		if err != nil {
			return 0, "", err
		}
		n, err := io.MultiWriter(w, sum).Write(resp.GetData())
		if err != nil {
			return 0, "", err
		}
		size += int64(n)
		if resp.GetSha256() == "" {
			continue
		}
		digest := hex.EncodeToString(sum.Sum(nil))
		if digest != resp.GetSha256() || size != resp.GetSizeBytes() {
			return 0, "", fmt.Errorf("the backup arrived damaged (%d bytes, sha256 %s; the broker sent %d bytes, sha256 %s); nothing was written",
				size, digest, resp.GetSizeBytes(), resp.GetSha256())
		}
		return size, digest, nil
	}
}

func restore(args []string, stdout, stderr io.Writer) error {
	var (
		cfg           datadir.Config
		d             = datadir.DefaultConfig()
		in            string
		allowUntagged bool
	)
	fs := newFlagSet("restore", stderr, `Puts a backup made by "credbroker backup" in place as the database of
--data-dir. It reads the backup once, into a staging file in --data-dir,
and checks that copy first: its SHA-256 against --in.sha256 if present,
every page, that the master key (--master-key-file or
CREDBROKER_MASTER_KEY, as for serve) opens it, and every record's integrity
tag. Only the checked copy is put in place. A backup made by a version that
did not tag records is restored only with --allow-untagged.
A database already in --data-dir is kept beside it, renamed
credbroker.db.before-restore-<time>. Stop the broker first; start it again
afterwards with the same master key. A backup taken while a master-key
rotation was under way needs both keys, as the broker did
(--previous-master-key-file).

With --storage etcd it loads the checked backup into an etcd prefix that
holds no broker yet (a new --etcd-prefix), and no replica starts on it
until the load is done; if it is interrupted, run it again. A backup of a
bbolt broker and one of a cluster restore alike into either, which is how
a broker moves between them.`)
	fs.StringVar(&in, "in", "", "the backup file (required)")
	fs.StringVar(&cfg.DataDir, "data-dir", d.DataDir, "directory to restore the database into (created with mode 0700)")
	fs.StringVar(&cfg.MasterKeyFile, "master-key-file", "", "file holding the 32-byte master key the backup was made under")
	previousKeyFlag(fs, &cfg)
	fs.DurationVar(&cfg.LockTimeout, "lock-timeout", d.LockTimeout, "how long to wait for the database if another process holds it")
	storageFlags(fs, &cfg, d)
	fs.BoolVar(&allowUntagged, "allow-untagged", false, "restore a backup made by a version that did not tag records for integrity checks: nothing shows whether its records were changed, so only for a file you trust")
	if err := parse(fs, args); err != nil {
		return err
	}
	if in == "" {
		return &usageError{"--in is required"}
	}
	masterKeysFromEnv(&cfg)
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	res, err := datadir.Restore(cfg, in, allowUntagged)
	if err != nil {
		return err
	}
	into := cfg.DataDir
	if cfg.Storage == datadir.StorageEtcd {
		into = "etcd prefix " + cfg.Etcd.Prefix
	}
	fmt.Fprintf(stdout, "restored %s into %s\n", in, into)
	if !res.Checksummed {
		fmt.Fprintf(stdout, "%s%s was missing, so only the database's structure was checked\n", in, datadir.ChecksumSuffix)
	}
	if res.Untagged {
		fmt.Fprintf(stdout, "%s was made by an earlier version whose records carry no integrity tags, so they could not be checked; the broker tags them as they are when it starts\n", in)
	}
	if res.Previous != "" {
		fmt.Fprintf(stdout, "the database that was there is kept as %s\n", res.Previous)
	}
	return nil
}
