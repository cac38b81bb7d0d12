package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

type masterKeyService struct {
	credbrokerv1.UnimplementedMasterKeyServiceServer
	store *store.Store
	// to is the master key this broker is configured with, which a
	// rotation moves the database to.
	to   *keyring.MasterKey
	log  *slog.Logger
	errs errorMapper
}

func (s *masterKeyService) RotateMasterKey(ctx context.Context, _ *credbrokerv1.RotateMasterKeyRequest) (*credbrokerv1.RotateMasterKeyResponse, error) {
	c := gate.CallFrom(ctx)
	ev := c.Event(codes.OK) // of the switch; the gate records the call as it ends
	r, err := s.store.RotateMasterKey(s.to, &ev)
	c.Detail = fmt.Sprintf("master key %s -> %s: %d accounts moved to fresh data keys, %d other records tagged anew, %d failing their integrity check left as they were", r.From, r.To, r.Accounts, r.Records, r.Tampered)
	if errors.Is(err, store.ErrRotationBlocked) {
		c.Detail = err.Error() // names keys and replicas only
	}
	if err != nil {
		return nil, s.errs.toStatus(ctx, err)
	}
	s.log.Info("moved the database to the master key", "from", r.From, "to", r.To, "accounts_resealed", r.Accounts, "records_retagged", r.Records, "records_tampered", r.Tampered)
	return &credbrokerv1.RotateMasterKeyResponse{
		FromKeyId: r.From, ToKeyId: r.To,
		AccountsResealed: int32(r.Accounts), RecordsRetagged: int64(r.Records), RecordsTampered: int64(r.Tampered),
	}, nil
}
