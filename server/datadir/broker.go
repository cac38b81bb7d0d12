package datadir

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// MACKey opens the broker's MAC key, which the database keeps wrapped by
// the master key, making one if it has none.
func MACKey(st *store.Store, masters *keyring.Masters) (*keyring.MACKey, error) {
	wrapped, err := st.WrappedMACKey()
	if err != nil {
		return nil, err
	}
	if wrapped != nil {
		return masters.UnwrapMACKey(wrapped)
	}
	mac, wrapped, err := masters.Current().NewMACKey()
	if err != nil {
		return nil, err
	}
	if err := st.CreateWrappedMACKey(wrapped); errors.Is(err, store.ErrExists) {
		return MACKey(st, masters) // another replica made it first
	} else if err != nil {
		return nil, err
	}
	return mac, nil
}

// ReportTampered logs and audits, at each start, every stored record
// (named by its resource name) that failed its integrity check and so is
// not used; and makes its credential event, once (see store.NoteTampered).
func ReportTampered(log *slog.Logger, st *store.Store, names []string) error {
	var events []store.AuditEvent
	for _, name := range names {
		log.Error("a stored record failed its integrity check (it was changed outside the broker, or copied from another database); it is not used", "resource", name)
		events = append(events, store.AuditEvent{
			Time: time.Now(), Principal: audit.BrokerPrincipal, Method: store.TamperedEvent, Resource: name, Code: grpcerr.CodeName(codes.DataLoss),
			Detail: "the stored record failed its integrity check, so it is not used",
		})
	}
	if len(events) == 0 {
		return nil
	}
	for _, name := range names {
		if err := st.NoteTampered(name); err != nil {
			return err
		}
	}
	return st.AppendAudit(events)
}

// CompactPeriodically compacts the database every interval when a
// deletion left sealed material in its freed pages, and trims etcd's
// history, until ctx ends.
func CompactPeriodically(ctx context.Context, st *store.Store, interval time.Duration, log *slog.Logger) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := CompactIfPending(st); err != nil {
			log.Error("could not compact the database; deleted secrets stay in its freed pages until it does", "error", err)
		}
		if err := st.TrimHistory(); err != nil {
			log.Error("could not compact etcd's history of overwritten and deleted values", "error", err)
		}
	}
}
