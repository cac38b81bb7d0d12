// Package connect keeps connect links: one-time, short-lived links an
// admin hands to whoever holds an account's credentials, so that they can
// link that one account from the Hub without being a broker admin. A link
// is a random secret; the broker stores it only under a keyed hash of it.
// Creating, using and the expiry of an unused link are audited.
package connect

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Bounds of a link's lifetime, and its default.
const (
	DefaultTTL = 30 * time.Minute
	MinTTL     = time.Minute
	MaxTTL     = 7 * 24 * time.Hour
)

// keep is how long a used or expired link is kept, so that opening it
// says so rather than that it is unknown.
const keep = 7 * 24 * time.Hour

// PrincipalPrefix names a link as the principal of the calls made with it.
const PrincipalPrefix = "connectSessions/"

var (
	// ErrUnknown: no such link (mistyped, tampered with, or long gone).
	ErrUnknown = grpcerr.New(codes.NotFound, "this connect link is not valid: check that it was copied whole, or ask your admin for a new one")
	// ErrAccountExists: the link's account id is taken.
	ErrAccountExists = grpcerr.New(codes.AlreadyExists, "an account with this id exists already")
)

// UsedError and ExpiredError say when a link stopped working.
type UsedError struct{ At time.Time }

// GRPCStatus: the link cannot be used.
func (e *UsedError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

func (e *UsedError) Error() string {
	return "this connect link was used on " + e.At.UTC().Format("2006-01-02 15:04 UTC") + ": each link links one account, once. Ask your admin for a new one if you need it."
}

type ExpiredError struct{ At time.Time }

func (e *ExpiredError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

func (e *ExpiredError) Error() string {
	return "this connect link expired on " + e.At.UTC().Format("2006-01-02 15:04 UTC") + ": ask your admin for a new one."
}

// Store is what connect keeps.
type Store interface {
	Account(id string) (store.Account, error)
	CreateConnectSession(hash string, c store.ConnectSession, ev store.AuditEvent) error
	ConnectSession(hash string) (store.ConnectSession, storage.Version, error)
	UpdateConnectSession(hash string, v storage.Version, c store.ConnectSession, ev store.AuditEvent) error
	ConnectSessions() ([]store.StoredConnectSession, error)
	DeleteConnectSession(hash string, v storage.Version) error
}

// Service creates, opens and uses links.
type Service struct {
	store Store
	mac   *keyring.MACKey
	now   func() time.Time
	log   *slog.Logger
}

func New(st Store, mac *keyring.MACKey, now func() time.Time, log *slog.Logger) *Service {
	return &Service{store: st, mac: mac, now: now, log: log}
}

// Link is a connect link, without its secret.
type Link struct {
	store.ConnectSession
	// hash and version locate it in the storage.
	hash    string
	version storage.Version
}

// Name is its resource name.
func (l Link) Name() string { return PrincipalPrefix + l.ID }

// NewLink is what an admin asks for.
type NewLink struct {
	AccountID, Provider, DisplayName, Creator string
	TTL                                       time.Duration
}

// secretSize is the size of a link's secret.
const secretSize = 32

// Create makes a link and returns it with its secret, which is shown only
// this once (the storage holds a keyed hash of it). ev, the audit event
// of its creation, is about the link's account.
func (s *Service) Create(in NewLink, ev store.AuditEvent) (Link, string, error) {
	b := make([]byte, secretSize)
	if _, err := rand.Read(b); err != nil {
		return Link{}, "", err
	}
	secret := base64.RawURLEncoding.EncodeToString(b)
	if _, err := s.store.Account(in.AccountID); err == nil || errors.Is(err, store.ErrIntegrity) {
		return Link{}, "", ErrAccountExists
	} else if !errors.Is(err, store.ErrNotFound) {
		return Link{}, "", err
	}
	now := s.now()
	id := make([]byte, 6)
	_, _ = rand.Read(id)
	c := store.ConnectSession{
		ID: "cs-" + hex.EncodeToString(id), AccountID: in.AccountID, Provider: in.Provider, DisplayName: in.DisplayName,
		Creator: in.Creator, CreateTime: now, ExpireTime: now.Add(in.TTL),
	}
	ev.Detail = fmt.Sprintf("connect link %s%s (%s) created, valid until %s", PrincipalPrefix, c.ID, c.Provider, c.ExpireTime.UTC().Format(time.RFC3339))
	hash := s.hash(secret)
	if err := s.store.CreateConnectSession(hash, c, ev); err != nil {
		if errors.Is(err, store.ErrExists) {
			return Link{}, "", ErrAccountExists
		}
		return Link{}, "", err
	}
	return Link{ConnectSession: c, hash: hash}, secret, nil
}

// Open returns the link of a secret if it can still be used, or
// ErrUnknown, a *UsedError or an *ExpiredError.
func (s *Service) Open(secret string) (Link, error) {
	if len(secret) != base64.RawURLEncoding.EncodedLen(secretSize) {
		return Link{}, ErrUnknown
	}
	hash := s.hash(secret)
	c, v, err := s.store.ConnectSession(hash)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrIntegrity):
		return Link{}, ErrUnknown
	case err != nil:
		return Link{}, err
	case !c.UseTime.IsZero():
		return Link{}, &UsedError{At: c.UseTime}
	case !s.now().Before(c.ExpireTime):
		return Link{}, &ExpiredError{At: c.ExpireTime}
	}
	return Link{ConnectSession: c, hash: hash, version: v}, nil
}

// Used records that link l linked its account. Its account exists now,
// so a second use of the link fails to create it whether or not this
// is recorded.
func (s *Service) Used(l Link, ev store.AuditEvent) error {
	l.UseTime = s.now()
	ev.Resource, ev.Detail = "accounts/"+l.AccountID, "connect link "+l.Name()+" used"
	return s.store.UpdateConnectSession(l.hash, l.version, l.ConnectSession, ev)
}

// hash is what a link is stored under.
func (s *Service) hash(secret string) string {
	return hex.EncodeToString(s.mac.Sum("connect-link", secret))
}

// sweepInterval is how often links are checked for expiry.
const sweepInterval = time.Minute

// Run audits the expiry of unused links and removes links kept past
// their time, every minute until ctx ends.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		if err := s.Sweep(); err != nil {
			s.log.Warn("could not check connect links for expiry", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep audits each unused link that expired (once, cluster-wide: the
// write is conditioned on the record's version) and removes the links
// kept past their time and those that fail their integrity check.
func (s *Service) Sweep() error {
	all, err := s.store.ConnectSessions()
	if err != nil {
		return err
	}
	now := s.now()
	for _, c := range all {
		switch {
		case c.Tampered, now.After(c.ExpireTime.Add(keep)):
			err = s.store.DeleteConnectSession(c.Hash, c.Version)
		case c.UseTime.IsZero() && !c.ExpiryAudited && !now.Before(c.ExpireTime):
			c.ExpiryAudited = true
			ev := audit.Own(now, "connect_session_expired", "accounts/"+c.AccountID, "connect link "+PrincipalPrefix+c.ID+" expired unused")
			if err = s.store.UpdateConnectSession(c.Hash, c.Version, c.ConnectSession, ev); errors.Is(err, storage.ErrConflict) {
				err = nil // another replica did it, or the link was used meanwhile
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
