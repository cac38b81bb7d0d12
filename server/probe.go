package server

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// storageProbe tells whether a replica on etcd reaches its storage: every
// probeInterval it makes a read that needs a quorum, bounded by
// probeTimeout. While that fails the replica is not ready, its gRPC
// health is NOT_SERVING, and the gate refuses every call at once
// (gate.ErrStorageUnavailable), so that clients move to another replica
// instead of waiting out the storage's timeouts; it recovers by itself.
type storageProbe struct {
	backend storage.Backend
	health  *health.Server
	log     *slog.Logger
	down    atomic.Bool
}

const (
	probeInterval = time.Second
	probeTimeout  = 2 * time.Second
)

// probeKey is read, never written: finding nothing proves a quorum
// answered.
const probeKey = "meta/probe"

func (p *storageProbe) run(ctx context.Context) {
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		p.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *storageProbe) check(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := p.backend.Get(cctx, probeKey)
	if ctx.Err() != nil {
		return
	}
	down := err != nil && !errors.Is(err, storage.ErrNotFound)
	if p.down.Swap(down) == down {
		return
	}
	serving := healthpb.HealthCheckResponse_SERVING
	if down {
		serving = healthpb.HealthCheckResponse_NOT_SERVING
		p.log.Error("the storage is out of reach: refusing calls and reporting not ready until it is back", "error", err)
	} else {
		p.log.Info("the storage is back: serving again")
	}
	p.health.SetServingStatus("", serving)
}

// Down reports whether the last probe failed.
func (p *storageProbe) Down() bool { return p != nil && p.down.Load() }
