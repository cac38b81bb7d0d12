package store

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
)

// A backup taken while the store is written to holds every record as it
// was when the backup began, each passing its integrity check: the copy
// never reads pages that writers freed and reused in the meantime.
func TestBackupWhileWritingIsWhole(t *testing.T) {
	s, _ := openTemp(t)
	appendEvents := func(n int) {
		evs := make([]AuditEvent, n)
		for i := range evs {
			evs[i] = AuditEvent{Time: time.Now(), Method: "GetToken", Principal: "svc"}
		}
		if err := s.AppendAudit(evs); err != nil {
			t.Error(err)
		}
	}
	appendEvents(2000)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					appendEvents(1)
				}
			}
		}()
	}
	dir := t.TempDir()
	for i := range 30 {
		path := filepath.Join(dir, fmt.Sprintf("backup-%d", i))
		if _, err := s.CompactTo(path); err != nil {
			t.Fatal(err)
		}
		if err := CheckRecords(path, keyring.NewMasters(testMaster)); err != nil {
			t.Errorf("backup %d: %v", i, err)
			break
		}
	}
	close(stop)
	wg.Wait()
}
