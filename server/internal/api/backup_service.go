package api

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/store"
)

// backupChunk is how much of a snapshot one BackupResponse carries.
const backupChunk = 256 << 10

type backupService struct {
	credbrokerv1.UnimplementedBackupServiceServer
	store *store.Store
	// dir stages each snapshot in a file, so that the read transaction
	// lasts as long as the disk takes, not as long as the client.
	dir   string
	audit *audit.Log
	errs  errorMapper
}

func (s *backupService) Backup(_ *credbrokerv1.BackupRequest, stream grpc.ServerStreamingServer[credbrokerv1.BackupResponse]) error {
	ctx := stream.Context()
	f, err := os.CreateTemp(s.dir, stagedBackupPattern) // mode 0600
	if err != nil {
		return s.errs.toStatus(ctx, fmt.Errorf("stage the snapshot: %w", err))
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	// Every event recorded so far, indexed; then a compacted copy: live
	// records only, never the freed pages of the database file, which may
	// hold deleted secrets.
	err = s.audit.Flush()
	var size int64
	if err == nil {
		size, err = s.store.CompactTo(f.Name())
	}
	sum := sha256.New()
	if err == nil {
		_, err = io.Copy(sum, f)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		return s.errs.toStatus(ctx, fmt.Errorf("stage the snapshot: %w", err))
	}
	digest := hex.EncodeToString(sum.Sum(nil))

	// Recorded before the first byte leaves, as a token is.
	c := gate.CallFrom(ctx)
	c.Detail = fmt.Sprintf("snapshot of %d bytes, sha256 %s", size, digest)
	if s.audit.Record(c.Event(codes.OK)) != nil {
		return gate.ErrAuditUnavailable
	}

	buf := make([]byte, backupChunk)
	for {
		n, err := io.ReadFull(f, buf)
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return s.errs.toStatus(ctx, fmt.Errorf("read the staged snapshot: %w", err))
		}
		resp := &credbrokerv1.BackupResponse{Data: buf[:n]}
		if last {
			resp.SizeBytes, resp.Sha256 = size, digest
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}

// stagedBackupPattern names snapshots staged in the data directory.
const stagedBackupPattern = "backup-*.tmp"

// RemoveStagedBackups deletes snapshots that a broker which stopped
// mid-backup left in the data directory dir.
func RemoveStagedBackups(dir string, log *slog.Logger) {
	staged, _ := filepath.Glob(filepath.Join(dir, stagedBackupPattern))
	for _, f := range staged {
		if err := os.Remove(f); err != nil {
			log.Warn("could not delete a snapshot left by an interrupted backup", "file", f, "error", err)
		}
	}
}
